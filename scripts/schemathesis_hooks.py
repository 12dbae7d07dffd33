"""Schemathesis hooks for scripts/schemathesis.sh.

Random ids almost never name a user or order that exists, so most generated
money requests would stop at 404. These hooks point part of the well-typed
ids at the seeded users and orders (and at orders opened during the run),
and the symbol at the priced one, so deposits, withdrawals, transfers and
orders execute; the rest keep their generated values, and ill-typed values
are left alone, so refusals stay covered too. Every valid Idempotency-Key is
made unique, so a request runs instead of replaying another one.

Every answer's status is appended to $SCHEMATHESIS_STATUS_LOG, from which the
script checks that the money operations did succeed during the run.
"""

import os
import random
import re
import uuid

import schemathesis

USERS = [int(u) for u in os.environ["SCHEMATHESIS_SEED_USERS"].split(",")]
ORDERS = [int(o) for o in os.environ["SCHEMATHESIS_SEED_ORDERS"].split(",")]
SYMBOL = os.environ["SCHEMATHESIS_SEED_SYMBOL"]
STATUS_LOG = os.environ["SCHEMATHESIS_STATUS_LOG"]
STEER = 0.75
# Its own generator: Hypothesis, which runs these hooks, owns the global one.
RNG = random.Random(os.environ.get("SCHEMATHESIS_SEED"))
USER_FIELDS = ("user_id", "from_user_id", "to_user_id")
KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")


def _steer():
    return RNG.random() < STEER


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def before_call(context, case, **kwargs):
    params = case.path_parameters or {}
    if "id" in params and _steer():
        raw = params["id"]
        if _is_id(raw) or (isinstance(raw, str) and raw.isdigit()):
            pool = ORDERS if case.path.startswith("/api/v1/orders/") else USERS
            params["id"] = RNG.choice(pool)
    if isinstance(params.get("symbol"), str) and SYMBOL_PATTERN.match(params["symbol"]) and _steer():
        params["symbol"] = SYMBOL
    if isinstance(case.body, dict):
        for name in USER_FIELDS:
            if _is_id(case.body.get(name)) and _steer():
                case.body[name] = RNG.choice(USERS)
        # a transfer to oneself is only a refusal (same_account): mostly avoid it
        sender, recipient = case.body.get("from_user_id"), case.body.get("to_user_id")
        if sender in USERS and sender == recipient and _steer():
            case.body["to_user_id"] = next(u for u in USERS if u != sender)
        symbol = case.body.get("symbol")
        if isinstance(symbol, str) and SYMBOL_PATTERN.match(symbol) and _steer():
            case.body["symbol"] = SYMBOL
        # generated strings are almost never addresses: give signups a real one
        if isinstance(case.body.get("email"), str) and _steer():
            case.body["email"] = f"st-{uuid.uuid4().hex[:12]}@example.com"
        if isinstance(case.body.get("referral_code"), str) and _steer():
            del case.body["referral_code"]
    if case.headers:
        for name in list(case.headers):
            value = case.headers[name]
            if name.lower() == "idempotency-key" and isinstance(value, str) and KEY.match(value):
                case.headers[name] = f"st-{uuid.uuid4()}"


@schemathesis.hook
def after_call(context, case, response):
    with open(STATUS_LOG, "a", encoding="utf-8") as log:
        log.write(f"{case.method.upper()} {case.path} {response.status_code}\n")
    if case.method.upper() == "POST" and case.path == "/api/v1/orders" and response.status_code == 201:
        try:
            ORDERS.append(int(response.json()["id"]))
        except (ValueError, KeyError, TypeError):
            pass
