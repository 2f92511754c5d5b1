"""Carry out a worker's Plan: each action against the broker, the lanes or Redis, in order."""

from __future__ import annotations

from services.common.amqp import Broker, RejectMessage
from services.common.publishing import emit, publish_result
from services.lanes.directory import LaneDirectory
from services.worker.actions import (
    Action,
    Call,
    Charge,
    Dead,
    Emit,
    Escalate,
    Hold,
    Plan,
    Publish,
    Reject,
    Release,
    Remember,
    Retry,
    Verify,
)
from services.worker.controls import CostControls

SERVICE = "worker"


class Executor:
    """The one place a worker's decisions turn into messages and Redis writes."""

    def __init__(self, broker: Broker, lanes: LaneDirectory, controls: CostControls) -> None:
        self.broker = broker
        self.lanes = lanes  # escalations, retries and holds go to the tenant's lane
        self.controls = controls

    async def carry_out(self, plan: Plan) -> bool:
        """Run every action of `plan`; return whether it ends by asking for a provider call."""
        for action in plan:
            await self.run(action)
        return bool(plan) and isinstance(plan[-1], Call)

    async def run(self, action: Action) -> None:
        broker, controls = self.broker, self.controls
        match action:
            case Call():
                pass  # the worker makes the call itself (the limiter, the provider)
            case Reject(reason):
                raise RejectMessage(reason)
            case Publish(result, reply_to):
                await publish_result(broker, result, reply_to)
            case Hold(tier, task, headers, delay_ms) | Retry(tier, task, headers, delay_ms):
                await self.lanes.publish_later(broker, tier, task, dict(headers), delay_ms)
            case Escalate(tier, task, headers):
                await self.lanes.publish(broker, tier, task.tenant, task,
                                         priority=task.priority, message_id=task.id,
                                         headers=dict(headers))
            case Dead(result, task, route, headers, _, reply_to):
                await publish_result(broker, result, reply_to)
                await broker.publish(broker.names.dlx, route, task, message_id=task.id,
                                     headers=dict(headers))
            case Charge(tenant, usd):
                await controls.charge(tenant, usd)
            case Release(task, routed_tier):
                await controls.release(task, routed_tier)
            case Remember(task, answer, tiers, semantic_tier):
                await controls.remember(task, answer, tiers, semantic_tier)
            case Verify(key, agreed):
                await controls.record_verification(key, agreed)
            case Emit(type_, tenant, task_id, data):
                await emit(broker, type_, SERVICE, tenant=tenant, task_id=task_id, **data)
