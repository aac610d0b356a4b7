"""Rules: every rule that acts on alerts (what it watches, what it does, whether it may fire
now) and the actions rules took, newest first, each with the alert that caused it."""

from __future__ import annotations

from aiohttp import web

from control.console.web import context, feeds_of, render

TITLE, PATH = "Rules", "/rules"
ACTIONS_SHOWN = 200


async def page(request: web.Request) -> web.Response:
    """?workspace= narrows both tables; ?rule=NAME narrows the actions to one rule's."""
    ctx = context(request)
    chosen_rule = request.query.get("rule") or None
    rules = [r for (ws, _), r in sorted(ctx.registry.alert_rules.items()) if ws in ctx.shown]
    # An action's status carries its rule and cause (control/registry/fold.py result_of):
    # accepted ones say what they did, rejected ones why not (fired already, cooling down...).
    actions = [s for s in reversed(feeds_of(request).statuses.statuses.copy())
               if "cause" in s.result and s.workspace in ctx.shown  # shown: readable ones only
               and chosen_rule in (None, s.result["rule"])][:ACTIONS_SHOWN]
    return render(request, "rules.html", ctx=ctx, rules=rules, actions=actions,
                  chosen_rule=chosen_rule)


ROUTES = [web.get(PATH, page)]
