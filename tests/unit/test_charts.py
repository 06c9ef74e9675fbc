"""Inline SVG charts: well-formed, scaled to their data, honest about holes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from vmcp.server.charts import HEIGHT, Series, line_chart, nice_ceiling

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def coordinates(line: ET.Element) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in
            (pair.split(",") for pair in line.attrib["points"].split())]


def test_each_series_is_one_line_through_all_its_points() -> None:
    svg = parse(line_chart("rps", "requests/s", [
        Series("r1", [(0, 1.0), (5, 2.0), (10, 4.0)]),
        Series("r2", [(0, 0.0), (5, 0.5), (10, 1.0)])], unit="/s"))
    assert svg.tag == SVG + "svg"
    assert svg.attrib["data-chart"] == "rps"
    lines = svg.findall(SVG + "polyline")
    assert [line.attrib["data-series"] for line in lines] == ["r1", "r2"]
    assert [len(coordinates(line)) for line in lines] == [3, 3]
    assert lines[0].attrib["stroke"] != lines[1].attrib["stroke"]
    legend = [t.text for t in svg.findall(SVG + "text") if t.attrib.get("class") == "legend"]
    assert legend == ["r1", "r2"]


def test_the_highest_value_reaches_the_top_and_zero_the_bottom() -> None:
    svg = parse(line_chart("c", "t", [Series("s", [(0, 0.0), (10, 5.0)])]))
    (x0, y0), (x1, y1) = coordinates(svg.find(SVG + "polyline"))  # type: ignore[arg-type]
    frame = svg.find(SVG + "rect")
    assert frame is not None
    top, bottom = float(frame.attrib["y"]), float(frame.attrib["y"]) + float(
        frame.attrib["height"])
    assert (y0, y1) == (pytest.approx(bottom), pytest.approx(top))
    assert x0 == pytest.approx(float(frame.attrib["x"]))
    assert x1 == pytest.approx(float(frame.attrib["x"]) + float(frame.attrib["width"]))
    assert "5" in [t.text for t in svg.findall(SVG + "text")]  # the y axis' top label


def test_a_hole_breaks_the_line_instead_of_drawing_a_zero() -> None:
    svg = parse(line_chart("c", "t", [Series("s", [(0, 1.0), (1, 2.0), (2, None), (3, 1.0),
                                                   (4, 3.0), (5, None), (6, 2.0)])]))
    assert [len(coordinates(line)) for line in svg.findall(SVG + "polyline")] == [2, 2]
    assert len(svg.findall(SVG + "circle")) == 1  # the lone point after the last hole


def test_no_measurement_says_so() -> None:
    for series in ([], [Series("s", [(0, None), (1, None)])]):
        svg = parse(line_chart("c", "latency", series))
        assert svg.findall(SVG + "polyline") == []
        assert "no data yet" in [t.text for t in svg.findall(SVG + "text")]
        assert int(svg.attrib["height"]) == HEIGHT


def test_names_are_escaped() -> None:
    svg = line_chart("a\"b", "<t>", [Series("<script>x</script>", [(0, 1.0), (1, 1.0)])])
    assert "<script>" not in svg
    parsed = parse(svg)
    assert parsed.attrib["data-chart"] == 'a"b'
    assert parsed.find(SVG + "polyline").attrib["data-series"] == "<script>x</script>"  # type: ignore[union-attr]


@pytest.mark.parametrize(("value", "ceiling"), [(0, 1), (0.7, 1), (1, 1), (1.2, 2), (2.1, 2.5),
                                               (3, 5), (7, 10), (0.013, 0.02), (420, 500)])
def test_the_y_axis_ends_on_a_round_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)
