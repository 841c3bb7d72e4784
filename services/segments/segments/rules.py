"""The rule language of rule segments: validated once, compiled to SQL, evaluated in Python.

A rule is a JSON tree: {"all": [...]}, {"any": [...]}, {"not": {...}} or a condition
{"field": "rfm.r_score", "op": "gte", "value": 4}. SQL (full recomputes, previews) and Python
(one customer as their data changes) read the same attributes (the customer_attributes view) with
the same typing, and a condition on a missing or mistyped value is false in both, never unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

ValueType = Literal["number", "string", "boolean", "datetime", "list", "any"]
Loc = tuple[str | int, ...]

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_NUMERIC_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_DATE_TEXT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# Date-times need a zone, so SQL and Python read them the same whatever the session time zone.
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_TIME_TEXT = re.compile(TIME_PATTERN)

OPS_BY_TYPE: dict[str, frozenset[str]] = {
    "number": frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "between", "exists"}),
    "string": frozenset({"eq", "ne", "in", "not_in", "exists"}),
    "boolean": frozenset({"eq", "ne", "exists"}),
    "datetime": frozenset({"gt", "gte", "lt", "lte", "between", "within_last_days", "exists"}),
    "list": frozenset({"contains", "exists"}),
    "any": frozenset({"exists"}),
}
ALL_OPS = frozenset().union(*OPS_BY_TYPE.values())
_SQL_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_PY_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda x, v: bool(x == v),
    "ne": lambda x, v: bool(x != v),
    "gt": lambda x, v: bool(x > v),
    "gte": lambda x, v: bool(x >= v),
    "lt": lambda x, v: bool(x < v),
    "lte": lambda x, v: bool(x <= v),
}

# Profile fields from profile.updated, by path inside the profile snapshot.
PROFILE_FIELDS: dict[str, ValueType] = {
    "lifecycle_stage": "string",
    "orders": "number",
    "net_revenue": "number",
    "currency": "string",
    "average_order_value": "number",
    "first_purchase_at": "datetime",
    "last_purchase_at": "datetime",
    "average_days_between_orders": "number",
    "refunds": "number",
    "top_categories": "list",
    "last_seen_at": "datetime",
    "loyalty_tier": "string",
    "loyalty_points": "number",
}
TRAIT_FIELDS: dict[str, ValueType] = {
    "city": "string",
    "country": "string",
    "gender": "string",
    "birthday": "datetime",
    "signup_at": "datetime",
    "marketing_consent": "boolean",
}
# Columns of the customer_attributes view segments computes itself.
COLUMN_FIELDS: dict[str, tuple[str, ValueType]] = {
    "rfm.recency_days": ("recency_days", "number"),
    "rfm.frequency": ("frequency", "number"),
    "rfm.monetary": ("monetary", "number"),
    "rfm.r_score": ("r_score", "number"),
    "rfm.f_score": ("f_score", "number"),
    "rfm.m_score": ("m_score", "number"),
    "rfm.segment": ("rfm_segment", "string"),
    "predictions.p_alive": ("p_alive", "number"),
    "predictions.expected_purchases_90d": ("expected_purchases_90d", "number"),
    "predictions.clv_365d": ("clv_365d", "number"),
}


class RuleError(ValueError):
    """A rule that cannot be used; `errors` name each bad path."""

    def __init__(self, errors: list[tuple[Loc, str, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg, _ in errors))
        self.errors = errors


@dataclass(frozen=True)
class Field:
    name: str
    type: ValueType
    column: str | None = None  # a view column, else a path inside the profile JSON
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    field: Field
    op: str
    value: Any = None


@dataclass(frozen=True)
class All:
    children: tuple[Rule, ...]


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Rule, ...]


@dataclass(frozen=True)
class Not:
    child: Rule


Rule = Condition | All | AnyOf | Not


def resolve_field(name: str, value: Any = None) -> Field | None:
    if name in COLUMN_FIELDS:
        column, kind = COLUMN_FIELDS[name]
        return Field(name, kind, column=column)
    parts = name.split(".")
    if not all(_IDENT.match(part) for part in parts):
        return None
    if parts[0] == "profile" and len(parts) == 2 and parts[1] in PROFILE_FIELDS:
        return Field(name, PROFILE_FIELDS[parts[1]], path=(parts[1],))
    if parts[0] == "profile" and len(parts) == 3 and parts[1] in ("interaction_counts", "satisfaction"):
        return Field(name, "number", path=(parts[1], parts[2]))
    if parts[0] == "traits" and len(parts) == 2:
        kind = TRAIT_FIELDS.get(parts[1]) or _custom_trait_type(value)
        return Field(name, kind, path=("traits", parts[1]))
    return None


def _custom_trait_type(value: Any) -> ValueType:
    """Custom traits have no declared type: the rule's value says how to compare."""
    sample = value[0] if isinstance(value, list) and value else value
    if isinstance(sample, bool):
        return "boolean"
    if isinstance(sample, int | float):
        return "number"
    if value is None:
        return "any"
    return "string"


# --- validation -------------------------------------------------------------------------------


@dataclass
class _Parser:
    max_nodes: int
    errors: list[tuple[Loc, str, str]] = field(default_factory=list)
    nodes: int = 0

    def fail(self, loc: Loc, message: str, kind: str = "value_error") -> None:
        self.errors.append((loc, message, kind))

    def parse(self, raw: Any, loc: Loc) -> Rule | None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            if self.nodes == self.max_nodes + 1:
                self.fail(loc, f"rule has more than {self.max_nodes} nodes")
            return None
        if not isinstance(raw, dict):
            self.fail(loc, "expected an object: {all}, {any}, {not} or a condition {field, op, value}", "type_error")
            return None
        combinators = [key for key in ("all", "any", "not") if key in raw]
        if combinators:
            if len(raw) != 1:
                self.fail(loc, f"'{combinators[0]}' must be the only key of its object")
                return None
            key = combinators[0]
            if key == "not":
                child = self.parse(raw["not"], (*loc, "not"))
                return Not(child) if child is not None else None
            items = raw[key]
            if not isinstance(items, list) or not items:
                self.fail((*loc, key), "expected a non-empty list of rules", "type_error")
                return None
            children = [self.parse(item, (*loc, key, i)) for i, item in enumerate(items)]
            if any(child is None for child in children):
                return None
            parsed = tuple(c for c in children if c is not None)
            return All(parsed) if key == "all" else AnyOf(parsed)
        return self.condition(raw, loc)

    def condition(self, raw: dict[str, Any], loc: Loc) -> Condition | None:
        unknown = sorted(set(raw) - {"field", "op", "value"})
        if unknown:
            self.fail((*loc, unknown[0]), "unknown key; a condition has field, op and value", "extra_forbidden")
            return None
        name, op = raw.get("field"), raw.get("op")
        if not isinstance(name, str):
            self.fail((*loc, "field"), "field is required (a string such as 'rfm.r_score')", "missing")
            return None
        if not isinstance(op, str) or op not in ALL_OPS:
            self.fail((*loc, "op"), f"op must be one of {', '.join(sorted(ALL_OPS))}", "enum")
            return None
        spec = resolve_field(name, raw.get("value"))
        if spec is None:
            self.fail((*loc, "field"), f"unknown field '{name}' (see the rule language in docs/api/segments.md)")
            return None
        if op not in OPS_BY_TYPE[spec.type]:
            allowed = ", ".join(sorted(OPS_BY_TYPE[spec.type]))
            self.fail((*loc, "op"), f"op '{op}' does not apply to {spec.type} field '{name}' (use {allowed})")
            return None
        if op == "exists":
            if "value" in raw:
                self.fail((*loc, "value"), "exists takes no value (wrap it in 'not' for absence)")
                return None
            return Condition(spec, op)
        if "value" not in raw:
            self.fail((*loc, "value"), "value is required", "missing")
            return None
        value = self.value(spec, op, raw["value"], (*loc, "value"))
        return None if value is None else Condition(spec, op, value)

    def value(self, spec: Field, op: str, raw: Any, loc: Loc) -> Any:
        if op == "within_last_days":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                self.fail(loc, "within_last_days takes a whole number of days >= 0", "type_error")
                return None
            return raw
        if op == "contains":
            if not isinstance(raw, str):
                self.fail(loc, "contains takes a string", "type_error")
                return None
            return raw
        if op in ("in", "not_in"):
            if not isinstance(raw, list) or not raw or len(raw) > 1000:
                self.fail(loc, f"{op} takes a list of 1 to 1000 values", "type_error")
                return None
            items = [self.scalar(spec, item, (*loc, i)) for i, item in enumerate(raw)]
            return None if any(item is None for item in items) else tuple(items)
        if op == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                self.fail(loc, "between takes [low, high]", "type_error")
                return None
            low, high = self.scalar(spec, raw[0], (*loc, 0)), self.scalar(spec, raw[1], (*loc, 1))
            if low is None or high is None:
                return None
            if low > high:
                self.fail(loc, "between takes [low, high] with low <= high")
                return None
            return (low, high)
        return self.scalar(spec, raw, loc)

    def scalar(self, spec: Field, raw: Any, loc: Loc) -> Any:
        converted = to_typed(spec.type, raw, strict=True)
        if converted is None:
            expected = {"number": "a number", "datetime": "an ISO 8601 date or date-time with zone"}
            self.fail(loc, f"expected {expected.get(spec.type, 'a ' + spec.type)} for '{spec.name}'", "type_error")
        return converted


def parse_rule(raw: Any, *, max_nodes: int = 200, loc: Loc = ("rule",)) -> Rule:
    """Validate a JSON rule; raises RuleError naming every bad path."""
    parser = _Parser(max_nodes)
    rule = parser.parse(raw, loc)
    if parser.errors or rule is None:
        raise RuleError(parser.errors or [(loc, "invalid rule", "value_error")])
    return rule


# --- typing shared by validation and evaluation -----------------------------------------------


def to_typed(kind: ValueType, raw: Any, *, strict: bool = False) -> Any:
    """A JSON value as the rule type, or None; mirrors the cx_* SQL functions of migration 0002."""
    if raw is None:
        return None
    if kind == "number":
        if isinstance(raw, bool):
            return None
        if isinstance(raw, int):
            return Decimal(raw)
        if isinstance(raw, float):
            return Decimal(repr(raw))
        if isinstance(raw, Decimal):
            return raw
        if isinstance(raw, str) and not strict and _NUMERIC_TEXT.match(raw):
            try:
                return Decimal(raw)
            except InvalidOperation:
                return None
        return None
    if kind == "string":
        return raw if isinstance(raw, str) else None
    if kind == "boolean":
        return raw if isinstance(raw, bool) else None
    if kind == "datetime":
        return parse_time(raw)
    if kind == "list":
        return raw if isinstance(raw, list) else None
    return raw


def parse_time(raw: Any) -> datetime | None:
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else None
    if isinstance(raw, date):
        return datetime(raw.year, raw.month, raw.day, tzinfo=UTC)
    if not isinstance(raw, str):
        return None
    try:
        if _DATE_TEXT.match(raw):
            return datetime.fromisoformat(raw).replace(tzinfo=UTC)
        if _TIME_TEXT.match(raw):
            return datetime.fromisoformat(raw)
    except ValueError:
        return None
    return None


# --- Python evaluation ------------------------------------------------------------------------


def attribute(attributes: Mapping[str, Any], spec: Field) -> Any:
    if spec.column is not None:
        return to_typed(spec.type, attributes.get(spec.column))
    value: Any = attributes.get("profile")
    for part in spec.path:
        value = value.get(part) if isinstance(value, dict) else None
    return to_typed(spec.type, value)


def evaluate(rule: Rule, attributes: Mapping[str, Any], *, as_of: datetime) -> bool:
    """Does one customer (a customer_attributes row) match? Missing values make a condition false."""
    if isinstance(rule, All):
        return all(evaluate(child, attributes, as_of=as_of) for child in rule.children)
    if isinstance(rule, AnyOf):
        return any(evaluate(child, attributes, as_of=as_of) for child in rule.children)
    if isinstance(rule, Not):
        return not evaluate(rule.child, attributes, as_of=as_of)
    value = attribute(attributes, rule.field)
    if value is None:
        return False
    op = rule.op
    if op == "exists":
        return True
    if op in _PY_COMPARE:
        return _PY_COMPARE[op](value, rule.value)
    if op == "in":
        return value in rule.value
    if op == "not_in":
        return value not in rule.value
    if op == "between":
        return bool(rule.value[0] <= value <= rule.value[1])
    if op == "within_last_days":
        return bool(as_of - timedelta(days=rule.value) <= value <= as_of)
    if op == "contains":
        return rule.value in value
    raise AssertionError(f"unhandled op {op}")


# --- SQL compilation --------------------------------------------------------------------------


def _typed_sql(spec: Field, alias: str) -> str:
    if spec.column is not None:
        return f"{alias}.{spec.column}"
    json_path = f"{alias}.profile #> '{{{','.join(spec.path)}}}'"
    function = {
        "number": "cx_num",
        "string": "cx_text",
        "boolean": "cx_bool",
        "datetime": "cx_time",
        "list": "cx_list",
        "any": "cx_present",
    }[spec.type]
    return f"{function}({json_path})"


@dataclass
class SqlRule:
    """A compiled rule: a boolean SQL expression over the alias and its bound parameters."""

    sql: str
    params: dict[str, Any]


def to_sql(rule: Rule, *, alias: str = "a", as_of_param: str = "as_of", prefix: str = "r") -> SqlRule:
    params: dict[str, Any] = {}

    def bind(value: Any) -> str:
        name = f"{prefix}{len(params)}"
        params[name] = value
        return f":{name}"

    def compile_node(node: Rule) -> str:
        if isinstance(node, All):
            return "(" + " AND ".join(compile_node(child) for child in node.children) + ")"
        if isinstance(node, AnyOf):
            return "(" + " OR ".join(compile_node(child) for child in node.children) + ")"
        if isinstance(node, Not):
            return f"(NOT {compile_node(node.child)})"
        return f"COALESCE({_condition_sql(node)}, false)"

    def cast(value: Any) -> str:
        kinds = ((bool, "boolean"), (datetime, "timestamptz"), (Decimal, "numeric"))
        kind = next((name for python_type, name in kinds if isinstance(value, python_type)), "text")
        return f"CAST({bind(value)} AS {kind})"

    def _condition_sql(node: Condition) -> str:
        x = _typed_sql(node.field, alias)
        if node.op == "exists":
            return f"({x} IS NOT NULL)"
        if node.op in _SQL_COMPARE:
            return f"({x} {_SQL_COMPARE[node.op]} {cast(node.value)})"
        if node.op in ("in", "not_in"):
            kind = "numeric[]" if node.field.type == "number" else "text[]"
            test = f"{x} = ANY(CAST({bind(list(node.value))} AS {kind}))"
            return f"({test})" if node.op == "in" else f"(NOT ({test}))"
        if node.op == "between":
            return f"({x} BETWEEN {cast(node.value[0])} AND {cast(node.value[1])})"
        if node.op == "within_last_days":
            days = bind(node.value)
            at = f"CAST(:{as_of_param} AS timestamptz)"
            return f"({x} >= {at} - make_interval(days => CAST({days} AS int)) AND {x} <= {at})"
        if node.op == "contains":
            return f"jsonb_exists({x}, CAST({bind(node.value)} AS text))"
        raise AssertionError(f"unhandled op {node.op}")

    return SqlRule(compile_node(rule), params)


def describe(rule: Rule) -> str:
    """A rule in words, for members' reasons: 'rfm.r_score >= 4 and traits.country in (DE, FR)'."""
    if isinstance(rule, All):
        return " and ".join(_wrap(child) for child in rule.children)
    if isinstance(rule, AnyOf):
        return " or ".join(_wrap(child) for child in rule.children)
    if isinstance(rule, Not):
        return f"not {_wrap(rule.child)}"
    words = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "not_in": "not in"}
    op = words.get(rule.op, rule.op.replace("_", " "))
    if rule.op == "exists":
        return f"{rule.field.name} exists"
    if isinstance(rule.value, tuple):
        shown = ", ".join(_show(v) for v in rule.value)
        return f"{rule.field.name} {op} ({shown})" if rule.op != "between" else f"{rule.field.name} between {shown}"
    return f"{rule.field.name} {op} {_show(rule.value)}"


def _wrap(rule: Rule) -> str:
    text = describe(rule)
    return f"({text})" if isinstance(rule, All | AnyOf) and len(rule.children) > 1 else text


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
