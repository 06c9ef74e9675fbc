"""Composite tools are checked before start-up, each problem at its place in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcp.config import load_config
from vmcp.errors import ConfigError

BACKENDS = 'backends: [{name: notes, url: "http://127.0.0.1:9001/mcp"}]\n'


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "vmcp.yaml"
    path.write_text(BACKENDS + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return str(caught.value).splitlines()


def test_a_valid_workflow_loads(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text(BACKENDS + """
composite_tools:
  - name: brief
    parameters: {type: object, properties: {city: {type: string}}}
    steps:
      - {id: a, tool: weather_forecast, arguments: {city: "{{ params.city }}"}}
      - {id: b, type: for_each, depends_on: [a], items: "{{ steps.a.output.days }}",
         step: {tool: notes_search, arguments: {query: "{{ item.condition }} {{ index }}"}}}
    output: {n: {type: integer, value: "{{ steps.b.output | length }}"}}
""")
    config = load_config(path, environ={})
    assert [s.id for s in config.composite_tools[0].steps] == ["a", "b"]


def test_template_and_dependency_problems_are_located(tmp_path: Path) -> None:
    found = problems(tmp_path, """
composite_tools:
  - name: brief
    parameters: {type: object, properties: {city: {type: string}}}
    steps:
      - {id: a, tool: weather_forecast, arguments: {city: "{{ params.cty }}"}}
      - {id: b, tool: notes_search, depends_on: [a], arguments: {q: "{{ steps.a.outptu }}"}}
      - {id: c, tool: notes_search, arguments: {q: "{{ steps.b.output }}"}}
      - {id: d, tool: notes_search, depends_on: [zz], when: "{{ steps.a.output"}
      - {id: e, tool: notes_search, arguments: {q: "{{ item }}"}}
""")
    assert sorted(found) == [
        "composite_tools[0].steps[0].arguments.city: params.cty is not among the "
        "parameters' properties (line 7)",
        "composite_tools[0].steps[1].arguments.q: steps.a.outptu: a step has output, "
        "status, error, text (line 8)",
        "composite_tools[0].steps[2].arguments.q: steps.b is read but 'b' is not among the "
        "step's dependencies (add it to depends_on) (line 9)",
        "composite_tools[0].steps[3].depends_on: unknown step 'zz' (line 10)",
        "composite_tools[0].steps[3].when: template syntax error: unexpected end of "
        "template, expected 'end of print statement'. (line 10)",
        "composite_tools[0].steps[4].arguments.q: unknown name 'item' in template (item "
        "and index exist in for_each steps only) (line 11)",
    ]


def test_cycles_duplicates_and_limits(tmp_path: Path) -> None:
    steps = "\n".join(f"      - {{id: s{i}, tool: t}}" for i in range(51))
    found = problems(tmp_path, f"""
composite_tools:
  - name: loop
    steps:
      - {{id: a, tool: t, depends_on: [b]}}
      - {{id: b, tool: t, depends_on: [a]}}
  - name: loop
    steps:
      - {{id: a, tool: t, on_error: {{action: retry}}}}
      - {{id: a, type: for_each, items: "{{{{ [] }}}}", max_parallel: 99, step: {{tool: t}}}}
  - name: big
    steps:
{steps}
""")
    assert "composite_tools[0].steps: dependency cycle a -> b -> a (line 5)" in found
    assert any(p.startswith("composite_tools[1].steps[0].on_error: action 'retry' needs "
                            "retries >= 1") for p in found)
    assert any(p.startswith("composite_tools[1].steps[1].max_parallel: Input should be less "
                            "than or equal to 32") for p in found)
    assert any(p.startswith("composite_tools[2].steps: Tuple should have at most 50 items")
               for p in found)
    assert any(p.startswith("composite_tools[1].name: duplicate composite tool 'loop'")
               for p in found)


def test_a_step_needs_the_fields_of_its_type(tmp_path: Path) -> None:
    found = problems(tmp_path, """
composite_tools:
  - name: x
    steps:
      - {id: ask, type: elicitation, message: hi, tool: t}
      - {id: 9lives, tool: t}
""")
    assert any("steps[0]: an elicitation step needs schema" in p for p in found)
    assert any("steps[1].id: '9lives' is not a step id" in p for p in found)


def test_a_step_cannot_call_a_composite_tool(tmp_path: Path) -> None:
    found = problems(tmp_path, """
composite_tools:
  - name: inner
    steps: [{id: a, tool: notes_search}]
  - name: outer
    steps: [{id: a, tool: inner}]
""")
    assert found == ["composite_tools[1].steps[0].tool: 'inner' is a composite tool: a step "
                     "calls backend tools only (line 7)"]
