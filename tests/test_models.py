"""The shared data types: what their constructors take, what parsing tolerates."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from agentic.models import AgentAllowance, ModelQuota, Task, TaskResult


@pytest.mark.parametrize(
    ("make", "told"),
    [
        (lambda: AgentAllowance(agent_id="a", daily_tokens=5), "'daily_tokens' (did you mean"),
        (lambda: ModelQuota(model="m", daily_token_budgt=5), "(did you mean 'daily_token_budget'"),
        (lambda: Task(title="t", lables=["py"]), "'lables' (did you mean 'labels'?)"),
        (lambda: TaskResult(success=True, outptu="x"), "'outptu' (did you mean 'output'?)"),
    ],
    ids=["allowance", "quota", "task", "result"],
)
def test_a_mistyped_keyword_is_an_error_naming_the_field(make: object, told: str) -> None:
    """A constructor keyword that is no field is a TypeError naming the close one: a
    typo must not leave a limit at its default (0, unlimited)."""
    with pytest.raises(TypeError, match="unexpected keyword argument") as caught:
        make()  # type: ignore[operator]
    assert told in str(caught.value)


def test_parsing_ignores_a_newer_peers_fields() -> None:
    """JSON or a stored row with fields this version does not know still parses (a
    newer server or writer), from a dict and from JSON."""
    task = Task.model_validate({"title": "t", "from_a_newer_version": 1})
    assert task.title == "t"
    [listed] = TypeAdapter(list[Task]).validate_json(b'[{"title": "t", "newer": {"x": 1}}]')
    assert listed.title == "t"


def test_aliases_and_field_names_are_both_keywords() -> None:
    """A field's name and its alias are both accepted by the constructor."""
    for name, field in Task.model_fields.items():
        if field.alias and field.alias != name:
            assert Task(title="t", **{field.alias: getattr(Task(title="t"), name)}).title == "t"
    assert AgentAllowance(agent_id="a", daily_token_limit=5).daily_token_limit == 5
