-- agentq shared limiter: one pool's token buckets (requests and tokens), its pool-wide pause
-- after a 429, and weighted fair shares of its tokens across tenants, decided atomically.
-- bucket.py, fairness.py and admission.py are the pure reference: keep the arithmetic in the
-- same order so both give the same doubles. Time comes from Redis, never from the workers.
--
-- KEYS[1] requests bucket (hash level, ts)    KEYS[4] tenants' virtual times (hash)
-- KEYS[2] tokens bucket (hash level, ts)      KEYS[5] tenants' weights (hash)
-- KEYS[3] pause (string with a PX expiry)     KEYS[6] active tenants (zset: tenant -> until)
-- ARGV[1] mode: acquire | true_up | sync | seed | pause; the other arguments depend on the mode.
-- Numbers go back as strings: Redis would truncate a Lua number to an integer.

local function fmt(x)
  return string.format('%.17g', x)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function capacity(limit, burst)
  return limit * burst / 60
end

local function level_at(key, limit, burst, now)
  local cap = capacity(limit, burst)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil or ts == nil then
    return cap
  end
  local elapsed = now - ts
  if elapsed < 0 then
    elapsed = 0
  end
  level = level + elapsed * (limit / 60)
  if level > cap then
    level = cap
  end
  return level
end

local function shortfall(level, need, limit)
  if level >= need then
    return 0
  end
  return (need - level) / (limit / 60)
end

-- Seconds to refill one call's worth of the binding bucket (bucket.call_interval).
local function call_interval(rpm, tpm, cost, burst)
  local interval = 0
  if rpm > 0 then
    interval = 1 / (rpm / 60)
  end
  if tpm > 0 then
    local tokens = math.min(cost, capacity(tpm, burst)) / (tpm / 60)
    if tokens > interval then
      interval = tokens
    end
  end
  return interval
end

-- admission.spread: lengthen a wait at random (u in [0, 1)) by up to `jitter` of it plus one
-- call's refill per other contender, so that waiters come back about one per call.
local function spread(wait, interval, jitter, contenders, u)
  return wait + u * (jitter * wait + (contenders - 1) * interval)
end

local function store(key, level, limit, burst, now)
  redis.call('HSET', key, 'level', fmt(level), 'ts', fmt(now))
  -- Once refilled it is the same as a missing bucket, so an idle pool simply expires.
  local ms = math.ceil((capacity(limit, burst) - level) / (limit / 60) * 1000) + 1000
  redis.call('PEXPIRE', key, ms)
end

-- ARGV: mode, rpm, tpm, burst_s, cost, tenant, weight, min_share, window, grace_s,
--       min_wait_s, max_wait_s, state_ttl_ms, jitter, contenders, u
-- Returns {granted, wait_ms, requests_level, tokens_level, reason, now, w_eff, vt}.
local function acquire()
  local rpm, tpm, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local cost, tenant = tonumber(ARGV[5]), ARGV[6]
  local weight, min_share, window = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local grace, min_wait, max_wait = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
  local state_ttl = tonumber(ARGV[13])
  local jitter, contenders, u = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
  local now = clock()

  local paused = redis.call('PTTL', KEYS[3])
  if paused > 0 then
    -- reason 'hold': the public label of agentq_limiter_denials_total for a pause
    return {0, tostring(paused), '', '', 'hold', fmt(now), '', ''}
  end

  -- Fair share: the active tenants other than this one, their slowest vt and total weight.
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', fmt(now))
  -- A pool has a handful of backlogged tenants, well within unpack's few thousand.
  local members = redis.call('ZRANGE', KEYS[6], 0, -1)
  local active, slowest, others_weight = false, nil, 0
  if #members > 0 then
    local vts = redis.call('HMGET', KEYS[4], unpack(members))
    local ws = redis.call('HMGET', KEYS[5], unpack(members))
    for i, name in ipairs(members) do
      if name == tenant then
        active = true
      else
        local v = tonumber(vts[i]) or 0
        if slowest == nil or v < slowest then
          slowest = v
        end
        others_weight = others_weight + (tonumber(ws[i]) or 1)
      end
    end
  end
  local vt = tonumber(redis.call('HGET', KEYS[4], tenant))
  if slowest ~= nil and not active then
    -- (Re)joining the backlog: idling banks no credit, an old lead is forgiven to the window.
    if vt == nil or vt < slowest then
      vt = slowest
    elseif vt > slowest + window then
      vt = slowest + window
    end
  end
  if vt == nil then
    vt = 0
  end
  local w_eff = weight
  if min_share > 0 and others_weight > 0 then
    w_eff = math.max(weight, min_share * others_weight / (1 - min_share))
  end

  local wait, reason, granted = 0, 'ok', 0
  local rl, tl = '', ''
  if slowest ~= nil and vt - slowest > window then
    reason = 'fair'
    if tpm > 0 then
      wait = (vt - slowest - window) * (others_weight + weight) / (tpm / 60)
    else
      wait = max_wait
    end
    if wait < min_wait then
      wait = min_wait
    elseif wait > max_wait then
      wait = max_wait
    end
    wait = spread(wait, 0, jitter, contenders, u)
  else
    -- Both buckets must hold 1 request and `cost` tokens, or nothing is taken.
    local rlevel, tlevel, rwait, twait = nil, nil, 0, 0
    if rpm > 0 then
      rlevel = level_at(KEYS[1], rpm, burst, now)
      rwait = shortfall(rlevel, math.min(1, capacity(rpm, burst)), rpm)
    end
    if tpm > 0 then
      tlevel = level_at(KEYS[2], tpm, burst, now)
      twait = shortfall(tlevel, math.min(cost, capacity(tpm, burst)), tpm)
    end
    if rwait > 0 or twait > 0 then
      reason = 'rate'
      wait = spread(math.max(rwait, twait), call_interval(rpm, tpm, cost, burst), jitter,
                    contenders, u)
    else
      granted = 1
      if rlevel ~= nil then
        rlevel = rlevel - 1
        store(KEYS[1], rlevel, rpm, burst, now)
      end
      if tlevel ~= nil then
        tlevel = tlevel - cost
        store(KEYS[2], tlevel, tpm, burst, now)
      end
      vt = vt + cost / w_eff
    end
    if rlevel ~= nil then rl = fmt(rlevel) end
    if tlevel ~= nil then tl = fmt(tlevel) end
  end

  redis.call('HSET', KEYS[4], tenant, fmt(vt))
  redis.call('HSET', KEYS[5], tenant, ARGV[7])
  -- GT (Redis 6.2+): a grant to one of the tenant's callers must not cut short another's wait.
  redis.call('ZADD', KEYS[6], 'GT', fmt(now + wait + grace), tenant)
  for i = 4, 6 do
    redis.call('PEXPIRE', KEYS[i], state_ttl)
  end
  return {granted, fmt(wait * 1000), rl, tl, reason, fmt(now), fmt(w_eff), fmt(vt)}
end

-- ARGV: mode, tpm, burst_s, delta, tenant, w_eff. Debits delta tokens (credits if negative)
-- and moves the tenant's virtual time by the same amount. Returns {tokens_level, now}.
local function true_up()
  local tpm, burst, delta = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local tenant, w_eff = ARGV[5], tonumber(ARGV[6])
  local now = clock()
  local tl = ''
  if tpm > 0 then
    local level = level_at(KEYS[2], tpm, burst, now) - delta
    local cap = capacity(tpm, burst)
    if level > cap then
      level = cap
    end
    store(KEYS[2], level, tpm, burst, now)
    tl = fmt(level)
  end
  local vt = tonumber(redis.call('HGET', KEYS[4], tenant))
  if vt ~= nil then
    redis.call('HSET', KEYS[4], tenant, fmt(vt + delta / w_eff))
  end
  return {tl, fmt(now)}
end

local function lower(key, limit, burst, now, remaining)
  if limit <= 0 then
    return ''
  end
  local level = level_at(key, limit, burst, now)
  if remaining ~= nil and remaining < level then
    level = remaining
    store(key, level, limit, burst, now)
  end
  return fmt(level)
end

-- ARGV: mode, rpm, tpm, burst_s, remaining_requests, remaining_tokens ('' = unknown).
-- Lowers the buckets to what the provider says remains. Returns {requests, tokens, now}.
local function sync()
  local rpm, tpm, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local now = clock()
  local rl = lower(KEYS[1], rpm, burst, now, tonumber(ARGV[5]))
  local tl = lower(KEYS[2], tpm, burst, now, tonumber(ARGV[6]))
  return {rl, tl, fmt(now)}
end

-- ARGV: mode, rpm, tpm, burst_s, requests_level, tokens_level ('' = unknown). Writes the
-- levels into buckets that do not exist (Redis restarted and lost them), never into one that
-- does: other workers may be drawing on it. Returns {requests, tokens, now}.
local function seed()
  local rpm, tpm, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local now = clock()
  local levels = {tonumber(ARGV[5]), tonumber(ARGV[6])}
  local limits = {rpm, tpm}
  local out = {'', ''}
  for i = 1, 2 do
    local limit, level = limits[i], levels[i]
    if limit > 0 then
      if level ~= nil and redis.call('EXISTS', KEYS[i]) == 0 then
        local cap = capacity(limit, burst)
        if level > cap then
          level = cap
        end
        store(KEYS[i], level, limit, burst, now)
      end
      out[i] = fmt(level_at(KEYS[i], limit, burst, now))
    end
  end
  return {out[1], out[2], fmt(now)}
end

-- ARGV: mode, pause_ms. Extends the pool's pause, never shortens it. Returns it in ms.
local function pause()
  local ms = tonumber(ARGV[2])
  local left = redis.call('PTTL', KEYS[3])
  if left < ms then
    redis.call('SET', KEYS[3], '1', 'PX', ms)
    left = ms
  end
  return left
end

local mode = ARGV[1]
if mode == 'acquire' then
  return acquire()
elseif mode == 'true_up' then
  return true_up()
elseif mode == 'sync' then
  return sync()
elseif mode == 'seed' then
  return seed()
elseif mode == 'pause' then
  return pause()
end
return redis.error_reply('limiter.lua: unknown mode ' .. tostring(mode))
