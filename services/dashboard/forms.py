"""The dashboard's forms (WTForms via Flask-WTF, so every POST carries a CSRF token)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, Field, Form, HiddenField, PasswordField, StringField
from wtforms.validators import AnyOf, InputRequired, Length, ValidationError

from services.dashboard.thresholds import SPECS, Spec, ThresholdError, Value, parse


class _Checked:
    """Validate a field with the same parser the JSON API uses, for the same messages."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, form: Form, field: Field) -> None:
        try:
            parse(self.key, field.data)
        except ThresholdError as exc:
            raise ValidationError(exc.message) from None


def _field(spec: Spec) -> Field:
    label = f"{spec.label} ({spec.unit})" if spec.unit else spec.label
    if spec.kind == "bool":
        return BooleanField(label)
    attrs = {"inputmode": "decimal", "autocomplete": "off"} if spec.kind == "number" else {
        "placeholder": "https://hooks.slack.com/services/…"}
    return StringField(label, validators=[_Checked(spec.key)], render_kw=attrs)


class ThresholdsForm(FlaskForm):
    """Every alert setting, one field per threshold key (fields are added below)."""

    def parsed(self) -> dict[str, Value]:
        """Return the submitted values, parsed (call after validate())."""
        return {spec.key: parse(spec.key, getattr(self, spec.key).data) for spec in SPECS}


for _spec in SPECS:
    setattr(ThresholdsForm, _spec.key, _field(_spec))


def thresholds_form(values: Mapping[str, Value] | None = None) -> ThresholdsForm:
    """Return the form, bound to the request's POST data or filled with `values`."""
    data: dict[str, Any] | None = None
    if values is not None:
        data = {k: (_show(v) if isinstance(v, float) else v) for k, v in values.items()}
    return ThresholdsForm(data=data)


def _show(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class LoginForm(FlaskForm):
    password = PasswordField("Admin password", validators=[InputRequired()])


class LogoutForm(FlaskForm):
    """Nothing but the CSRF token: logging out is a POST."""


class ReplayForm(FlaskForm):
    """Replay one dead task (scope "one": its id and tenant) or every letter matching the
    page's filters (scope "matching": reason and tenant, empty = any)."""

    scope = HiddenField(validators=[AnyOf(("one", "matching"))])
    task_id = HiddenField(validators=[Length(max=255)])
    tenant = HiddenField(validators=[Length(max=64)])
    reason = HiddenField(validators=[Length(max=255)])

    def validate_task_id(self, field: Field) -> None:
        if self.scope.data == "one" and not (field.data or "").strip():
            raise ValidationError("a single replay names its task id")
