"""What a runner sends fits the task API's body limit, whatever the text holds."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator

import pytest

from agentic._client_wire import encode_body
from agentic.errors import ConfigError
from agentic.models import Task, TaskResult, TaskStatus
from agentic.runner import AgentRunner, SubprocessHandler, TaskContext
from agentic.runner._sizes import clean, json_bytes, tail_within, within
from tests.test_runner import AGENT, System, build_system, wait_for


@pytest.fixture
def system() -> Iterator[System]:
    with build_system() as made:
        yield made


@pytest.fixture
def small_system() -> Iterator[System]:
    """A task server that refuses bodies over 64 KiB."""
    with build_system(max_body_bytes=64 * 1024) as made:
        yield made


@pytest.fixture
def tiny_system() -> Iterator[System]:
    """A task server that refuses bodies over 4 KiB."""
    with build_system(max_body_bytes=4 * 1024) as made:
        yield made


def run_logging(system: System, lines: list[str]) -> tuple[AgentRunner, Task]:
    """Run a task whose handler logs ``lines``, then "the last line", and succeeds;
    the runner and the task, once completed and its last line stored."""

    def handler(task: Task, ctx: TaskContext) -> str:
        for line in lines:
            ctx.log(line)
        ctx.log("the last line")
        return "ok"

    runner = system.started(handler)
    task = system.finished(system.submit().id)
    assert task.status == TaskStatus.COMPLETED
    wait_for(lambda: "the last line" in system.tasks.logs(task.id).lines)
    return runner, task


# --- the pure helpers ------------------------------------------------------------


def test_json_bytes_counts_encoded_bytes_not_characters() -> None:
    """A CJK character is 3 bytes of UTF-8 JSON, a control character 6, ASCII 1."""
    assert json_bytes("ab") == 4
    assert json_bytes("\u4e2d" * 10) == 32
    assert json_bytes("\x01" * 10) == 62


def test_tail_within_keeps_the_end_and_fits() -> None:
    """A text over the limit is cut from the start, marked, and fits the limit."""
    for text in ("x" * 100_000, "\u4e2d" * 100_000, "\x01" * 100_000, "ab\n" * 50_000):
        cut = tail_within(text, 10_000)
        assert json_bytes(cut) <= 10_000
        assert cut.startswith("[truncated]\n") and text.endswith(cut.removeprefix("[truncated]\n"))
        assert json_bytes(cut) > 8_000  # not cut far below the limit
    assert tail_within("short", 100) == "short"


def test_within_keeps_the_first_items_that_fit_and_says_the_rest() -> None:
    """Items past the limit are left out, and a last item says how many."""
    items = ["a" * 1000] * 10
    kept = within(items, 3_500)
    assert kept[:-1] == ["a" * 1000] * 3
    assert kept[-1] == "[agentic: 7 more left out: over 3500 bytes]"
    assert json_bytes(json.dumps(kept)) <= 3_500 + 200
    assert within(["x"], 3_500) == ["x"]


def test_clean_escapes_lone_surrogates_only() -> None:
    """A lone surrogate becomes its escape; valid text, emoji included, is unchanged."""
    assert clean("a\ud800b") == "a\\ud800b"
    assert clean("ok \U0001f600") == "ok \U0001f600"


# --- through a runner ------------------------------------------------------------


def test_non_ascii_output_near_the_char_limit_completes(system: System) -> None:
    """200,000 CJK characters of output (600 KB of UTF-8) are clipped to fit and complete."""
    output = "\u4e2d" * 199_999 + "E"
    runner = system.started(lambda task, ctx: output)
    task = system.finished(system.submit().id)
    assert task.status == TaskStatus.COMPLETED
    assert task.result is not None and task.result.output.endswith("\u4e2dE")
    assert json_bytes(task.result.output) <= 256 * 1024
    wait_for(lambda: runner.completed == 1)


def test_artifacts_are_clipped_to_fit(system: System) -> None:
    """Artifacts beyond 64 KiB together are left out, and the last one says so."""
    result = TaskResult(success=True, artifacts=[f"{n}:" + "x" * 10_000 for n in range(200)])
    system.started(lambda task, ctx: result)
    task = system.finished(system.submit().id)
    assert task.status == TaskStatus.COMPLETED and task.result is not None
    artifacts = task.result.artifacts
    assert 1 < len(artifacts) < 200 and artifacts[0].startswith("0:")
    assert artifacts[-1].startswith(f"[agentic: {200 - len(artifacts) + 1} more left out")


def test_log_lines_of_wide_characters_are_all_stored(system: System) -> None:
    """Lines whose JSON is far larger than their character count all reach the log."""

    runner, task = run_logging(system, ["\ufffd" * 16_000] * 20)
    assert len(system.tasks.logs(task.id).lines) == 22  # the header, 20 lines, the last
    assert runner.errors == 0


def test_invalid_utf8_from_a_command_reaches_the_log(system: System) -> None:
    """A command writing invalid UTF-8 has its lines logged (replaced), none lost."""
    script = (
        "import sys; w = sys.stdout.buffer\n"
        "for _ in range(40): w.write(b'\\xff' * 8000 + b'\\n')\n"
        "w.write(b'the last line\\n')"
    )
    runner = system.started(SubprocessHandler([sys.executable, "-c", script]))
    task = system.finished(system.submit().id)
    assert task.status == TaskStatus.COMPLETED
    wait_for(lambda: "the last line" in system.tasks.logs(task.id).lines)
    assert runner.errors == 0


def test_lone_surrogates_from_a_handler_are_sent_escaped(system: System) -> None:
    """Output and log lines holding lone surrogates are sent with them escaped."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.log("bad \udcff byte")
        return "out \ud800 put"

    system.started(handler)
    task = system.finished(system.submit().id)
    assert task.status == TaskStatus.COMPLETED and task.result is not None
    assert task.result.output == "out \\ud800 put"
    wait_for(lambda: "bad \\udcff byte" in system.tasks.logs(task.id).lines)


def test_a_result_refused_as_too_large_is_sent_cut(small_system: System) -> None:
    """A task API with a 64 KiB body limit refuses a 200 KB result: it is sent cut."""
    small_system.started(lambda task, ctx: "y" * 200_000 + "END")
    task = small_system.finished(small_system.submit().id)
    assert task.status == TaskStatus.COMPLETED and task.result is not None
    assert task.result.output.startswith("[agentic: the task API refused the whole result")
    assert task.result.output.endswith("yEND") and len(task.result.output) < 10_000


def test_logs_refused_as_too_large_are_split_and_cut(small_system: System) -> None:
    """Log batches a 64 KiB limit refuses are sent in halves; a line alone over it, cut."""

    def handler(task: Task, ctx: TaskContext) -> str:
        for number in range(30):
            ctx.log(f"{number}:" + "z" * 8_000)
        ctx.log("\x01" * 16_000)  # 96 KB of JSON alone
        ctx.log("the last line")
        time.sleep(0.2)
        return "ok"

    small_system.started(handler)
    task = small_system.finished(small_system.submit().id)
    assert task.status == TaskStatus.COMPLETED
    wait_for(lambda: "the last line" in small_system.tasks.logs(task.id).lines)
    lines = small_system.tasks.logs(task.id).lines
    assert [line.split(":")[0] for line in lines[1:31]] == [str(n) for n in range(30)]
    assert lines[31].endswith("[cut: the task API refused it whole]")


def test_a_line_refused_even_cut_is_replaced_by_a_note(tiny_system: System) -> None:
    """Under a 4 KiB limit a line whose JSON is 12 KB is refused whole and cut: it is
    replaced by a short note, in a bounded number of requests, and logging goes on."""
    sent: list[list[str]] = []
    real = tiny_system.client.append_logs

    def counting(task_id: str, lines: Iterable[str]) -> int:
        sent.append(list(lines))
        return real(task_id, sent[-1])

    tiny_system.client.append_logs = counting  # type: ignore[method-assign]

    runner, task = run_logging(tiny_system, ["\x1b" * 2000])
    lines = tiny_system.tasks.logs(task.id).lines
    assert any(line.endswith("[cut: the task API refused it whole]") for line in lines)
    assert len(sent) < 10
    beat = tiny_system.registry.get(AGENT).last_heartbeat
    wait_for(lambda: tiny_system.registry.get(AGENT).last_heartbeat != beat)  # still beating
    assert runner.errors > 0  # each refusal is counted


def test_a_result_refused_even_cut_is_sent_as_a_note(tiny_system: System) -> None:
    """Under a 4 KiB limit even the cut result is refused: a one-line note completes it."""
    tiny_system.started(lambda task, ctx: "y" * 200_000 + "END")
    task = tiny_system.finished(tiny_system.submit().id)
    assert task.status == TaskStatus.COMPLETED and task.result is not None
    assert task.result.output == "[agentic: the task API refused the result as too large, even cut]"


def test_the_client_refuses_text_that_is_not_unicode_before_sending(system: System) -> None:
    """A lone surrogate in a request is a ConfigError naming it; nothing is created."""
    with pytest.raises(ConfigError, match="not valid Unicode"):
        system.client.create_task(Task(title="see \ud800 here"))
    assert system.tasks.list() == []


def test_bodies_are_sent_as_utf8() -> None:
    """Non-ASCII text travels as UTF-8 (3 bytes a CJK character), not as 6-byte escapes."""
    assert encode_body({"title": "\u4e2d"}) == '{"title": "\u4e2d"}'.encode()
    assert len(encode_body({"title": "\u4e2d" * 1000})) == 3000 + len('{"title": ""}')
