"""Query-string filters, ordering and DRF-style page-number pagination for list endpoints."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict

from local_rehive.courier import Task
from local_rehive.errors import ApiError, field_error
from local_rehive.model import Account, Transaction, Webhook
from local_rehive.store import Store

T = TypeVar("T")
Check = Callable[[Transaction], bool]

DEFAULT_PAGE_SIZE = 15
MAX_PAGE_SIZE = 250  # a larger page_size is clamped to this, as DRF's max_page_size does

_OPERATORS = {
    "": operator.eq,
    "__gt": operator.gt,
    "__gte": operator.ge,
    "__lt": operator.lt,
    "__lte": operator.le,
}
_NUMBERS = ("created", "updated", "executed", "amount")
_EXACT = ("id", "collection", "account", "reference", "partner")  # compared as given
_FOLDED = ("status", "tx_type", "subtype", "currency")  # compared case-insensitively
_ORDERINGS = frozenset({"created", "updated", "amount"})
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def filter_transactions(
    store: Store, company: str | None, txs: Sequence[Transaction], args: MultiDict, *, by_user: bool = True
) -> list[Transaction]:
    """Keep the transactions matching Rehive's filters in `args` (unknown ones are ignored), ordered."""
    checks = list(_checks(store, company, args, by_user=by_user))
    kept = [tx for tx in txs if all(check(tx) for check in checks)]
    return _ordered(kept, args.get("orderby", "-created"))


def _checks(store: Store, company: str | None, args: MultiDict, *, by_user: bool) -> Iterator[Check]:
    for name in _EXACT:
        if name in args:
            yield _equals(name, args[name])
    for name in _FOLDED:
        if name in args:
            yield _equals(name, args[name], fold=True)
    for name in ("id", "status", "subtype"):
        if f"{name}__in" in args:
            yield _member_of(name, args[f"{name}__in"], fold=name != "id")
    for name in _NUMBERS:
        for suffix, compare in _OPERATORS.items():
            if name + suffix in args:
                yield _compares(name, compare, _number(args, name + suffix))
    if "partner__isnull" in args:
        wanted = parse_boolean(args, "partner__isnull")
        yield lambda tx: (tx.partner_id is None) == wanted
    if by_user and "user" in args:
        user = store.find_user(company, args["user"])
        user_id = user.id if user else None
        yield lambda tx: tx.user_id == user_id


def _value(tx: Transaction, name: str) -> object:
    return tx.partner_id if name == "partner" else getattr(tx, name)


def _equals(name: str, wanted: str, *, fold: bool = False) -> Check:
    if fold:
        return lambda tx: str(_value(tx, name)).lower() == wanted.lower()
    return lambda tx: _value(tx, name) == wanted


def _member_of(name: str, listed: str, *, fold: bool) -> Check:
    wanted = {item.strip().lower() if fold else item.strip() for item in listed.split(",") if item.strip()}
    if fold:
        return lambda tx: str(getattr(tx, name)).lower() in wanted
    return lambda tx: getattr(tx, name) in wanted


def _compares(name: str, compare: Callable[[int, int], bool], bound: int) -> Check:
    def check(tx: Transaction) -> bool:
        value = getattr(tx, name)
        return value is not None and compare(value, bound)

    return check


def _number(args: MultiDict, name: str) -> int:
    try:
        return int(args[name])
    except ValueError:
        raise field_error(name, "Enter a number.") from None


def parse_boolean(args: MultiDict, name: str) -> bool:
    """Read a django-filter style boolean (`true`/`false`/`1`/`0`) from the query, or raise a 400."""
    value = _BOOLEANS.get(args[name].strip().lower())
    if value is None:
        raise field_error(name, "Select a valid choice.")
    return value


def _ordered(txs: list[Transaction], orderby: str) -> list[Transaction]:
    field = orderby.removeprefix("-")
    if field not in _ORDERINGS:  # DRF ignores an ordering it does not allow
        field, orderby = "created", "-created"
    return sorted(txs, key=lambda tx: (getattr(tx, field), tx.seq), reverse=orderby.startswith("-"))


def filter_webhook_tasks(tasks: Sequence[Task], hooks: dict[int, Webhook], args: MultiDict) -> list[Task]:
    """Keep the tasks matching Rehive's webhook-task filters in `args`, newest first."""
    kept = [task for task in tasks if task.webhook_id in hooks]
    if "webhook" in args:
        kept = [task for task in kept if str(task.webhook_id) == args["webhook"]]
    for name in ("event", "url", "secret"):
        if f"webhook__{name}" in args:
            wanted = args[f"webhook__{name}"]
            kept = [task for task in kept if getattr(hooks[task.webhook_id], name) == wanted]
    for name in ("created", "updated", "completed", "failed"):
        for suffix, compare in _OPERATORS.items():
            if name + suffix in args:
                bound = _number(args, name + suffix)
                kept = [
                    task
                    for task in kept
                    if getattr(task, name) is not None and compare(getattr(task, name), bound)
                ]
        if f"{name}__isnull" in args and name in ("completed", "failed"):
            wanted = parse_boolean(args, f"{name}__isnull")
            kept = [task for task in kept if (getattr(task, name) is None) == wanted]
    return sorted(kept, key=lambda task: task.created, reverse=True)


def filter_accounts(store: Store, company: str, args: MultiDict) -> list[Account]:
    """Keep the company's accounts matching `user`, `name`, `reference` and `primary`, newest first."""
    kept = store.accounts_of(company)
    if "user" in args:
        user = store.find_user(company, args["user"])
        kept = [account for account in kept if user is not None and account.user_id == user.id]
    for name in ("name", "reference"):
        if name in args:
            kept = [account for account in kept if getattr(account, name) == args[name]]
    if "primary" in args:
        primary = parse_boolean(args, "primary")
        kept = [account for account in kept if account.primary == primary]
    return sorted(kept, key=lambda account: (account.created, account.reference), reverse=True)


def paginate(items: Sequence[T], args: MultiDict, base_url: str, render: Callable[[T], dict]) -> dict:
    """Return `{count, next, previous, results}` for the page asked in `args`, or raise a 404."""
    size = _page_size(args.get("page_size"))
    pages = max(1, math.ceil(len(items) / size))
    raw = args.get("page", "1")
    page = pages if raw == "last" else _positive(raw)
    if page is None or page > pages:
        raise ApiError(404, "Invalid page.")
    start = (page - 1) * size
    return {
        "count": len(items),
        "next": _page_link(base_url, args, page + 1) if page < pages else None,
        "previous": _page_link(base_url, args, page - 1) if page > 1 else None,
        "results": [render(item) for item in items[start : start + size]],
    }


def _positive(raw: str | None) -> int | None:
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if value > 0 else None


def _page_size(raw: str | None) -> int:
    size = _positive(raw)
    return DEFAULT_PAGE_SIZE if size is None else min(size, MAX_PAGE_SIZE)


def _page_link(base_url: str, args: MultiDict, page: int) -> str:
    """Build DRF's link: same query, `page` replaced (dropped for page 1), keys sorted."""
    query = {name: args.getlist(name) for name in args if name != "page"}
    if page > 1:
        query["page"] = [str(page)]
    encoded = urlencode(sorted(query.items()), doseq=True)
    return f"{base_url}?{encoded}" if encoded else base_url
