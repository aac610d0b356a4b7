"""The Python client's rules that act on alerts, and the pausing of split routes.

A mixin of control.client.Client, kept apart so each file stays one subject.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from control.registry.events import ControlEvent
from control.registry.state import ACTIONS, Deployment
from schemas.errors import Rejected

if TYPE_CHECKING:
    from control.config import Settings
    from control.registry.events import ControlStatus
    from control.registry.state import AlertRule, Registry


class RuleClient:
    """Methods of Client for rules and route pauses."""

    settings: Settings

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def events(self) -> list[ControlEvent]: ...
        def _ws(self, workspace: str | None) -> str: ...
        def _readable(self, workspace: str | None) -> tuple[str, Registry]: ...

    def create_rule(
        self, name: str, pipeline: str, action: str, *, assay: str | None = None,
        on: Sequence[str] = ("alert",), version: int | None = None,
        step: int | None = None, route: int | None = None, orchestration: str | None = None,
        arguments: Mapping[str, str] | None = None, cooldown_s: int = 0,
        workspace: str | None = None,
    ) -> AlertRule:
        """A rule: when an assay of `pipeline` (or only `assay`) raises a status in `on`, do
        `action` (rollback [to version], undeploy, pause_route step/route, run_task
        orchestration with arguments), at most once per cooldown_s."""
        if action not in ACTIONS:
            raise Rejected(f"unknown action {action!r}; a rule can {', '.join(ACTIONS)}")
        ws = self._ws(workspace)
        self.send("CreateRule", {
            "name": name, "pipeline": pipeline, "assay": assay, "on": list(on),
            "action": action, "version": version, "step": step, "route": route,
            "orchestration": orchestration, "arguments": dict(arguments or {}),
            "cooldown_s": cooldown_s}, workspace=ws)
        return self.registry().alert_rules[(ws, name)]

    def rules(self, workspace: str | None = None) -> list[AlertRule]:
        ws, registry = self._readable(workspace)
        return [r for (w, _), r in sorted(registry.alert_rules.items()) if w == ws]

    def rule(self, name: str, workspace: str | None = None) -> AlertRule:
        ws, registry = self._readable(workspace)
        found = registry.alert_rules.get((ws, name))
        if found is None:
            raise Rejected(f"unknown rule {name!r} in workspace {ws!r}")
        return found

    def pause_rule(self, name: str, workspace: str | None = None) -> None:
        self.send("PauseRule", {"name": name}, workspace=self._ws(workspace))

    def resume_rule(self, name: str, workspace: str | None = None) -> None:
        self.send("ResumeRule", {"name": name}, workspace=self._ws(workspace))

    def delete_rule(self, name: str, workspace: str | None = None) -> None:
        self.send("DeleteRule", {"name": name}, workspace=self._ws(workspace))

    def rule_actions(self, name: str | None = None,
                     workspace: str | None = None) -> list[ControlEvent]:
        """The actions rules published in the workspace (of rule `name` only, if given), in
        the control topic's order: accepted or not, each with its cause."""
        ws, _ = self._readable(workspace)
        return [e for e in self.events() if e.workspace == ws and e.payload.get("cause")
                and name in (None, e.payload["cause"]["rule"])]

    # -- split routes --------------------------------------------------------------------------

    def pause_route(self, pipeline: str, step: int, route: int,
                    workspace: str | None = None) -> Deployment:
        """Send no records to route `route` of split step `step` (both from 1) of the deployed
        version; the other routes share its weight."""
        ws = self._ws(workspace)
        self.send("PauseRoute", {"pipeline": pipeline, "step": step, "route": route,
                                 "cause": None}, workspace=ws)
        return self.registry().deployments[(ws, pipeline)]

    def resume_route(self, pipeline: str, step: int, route: int,
                     workspace: str | None = None) -> Deployment:
        ws = self._ws(workspace)
        self.send("ResumeRoute", {"pipeline": pipeline, "step": step, "route": route},
                  workspace=ws)
        return self.registry().deployments[(ws, pipeline)]
