//! The SVG drawing of a plan version (`?format=svg`), optionally marked with its diff against
//! an older version.
//!
//! The layered layout (ranks, crossing minimisation, edge routing) comes from `layout-rs`; the
//! markup is ours, because the console's script and style sheet depend on it: one
//! `<g class="node diff-…" data-node-id data-capability>` per node and one
//! `<path class="edge diff-…" data-from data-to>` per edge, no `id` on either, and every style
//! selector scoped under `.flexrun-plan` so the drawing can be inlined into a page.
//! Nodes and edges the newer version removed are drawn as ghosts (`diff-removed`): the union
//! of both versions is laid out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

use crate::graph::{PlanEdge, PlanGraph, PlanNode};

/// Space around the drawing, in px.
const MARGIN: f64 = 12.0;
/// Box height: the node id over the capability id.
const BOX_HEIGHT: f64 = 46.0;
const MIN_BOX_WIDTH: f64 = 80.0;
/// Estimated advance of one character of the node id (13px) and of the capability (10px).
const ID_CHAR_WIDTH: f64 = 7.8;
const CAP_CHAR_WIDTH: f64 = 6.2;
const BOX_PADDING: f64 = 24.0;
/// The one marker every edge ends with. Every drawing defines it identically, so two
/// drawings inlined into one page may share it harmlessly.
const ARROW_MARKER: &str = "flexrun-plan-arrow";

const STYLE: &str = "\
.flexrun-plan text{font-family:system-ui,sans-serif;font-size:13px;fill:#222;text-anchor:middle}\
.flexrun-plan text.cap{font-size:10px;fill:#555}\
.flexrun-plan .node rect{fill:#eeeeee;stroke:#9e9e9e;stroke-width:1.5}\
.flexrun-plan .node.diff-added rect{stroke:#2e7d32;stroke-width:2.5}\
.flexrun-plan .node.diff-changed rect{stroke:#f59e0b;stroke-width:2.5}\
.flexrun-plan .node.diff-removed{opacity:.5}\
.flexrun-plan .node.diff-removed rect{stroke:#c62828;stroke-width:2;stroke-dasharray:6 4}\
.flexrun-plan .node.state-pending rect{fill:#ffffff}\
.flexrun-plan .node.state-running rect{fill:#dbeafe}\
.flexrun-plan .node.state-done rect{fill:#dcfce7}\
.flexrun-plan .node.state-failed rect{fill:#fee2e2}\
.flexrun-plan .node.state-skipped rect{fill:#bdbdbd}\
.flexrun-plan .edge{fill:none;stroke:#9e9e9e;stroke-width:1.5}\
.flexrun-plan .edge.diff-added{stroke:#2e7d32;stroke-width:2}\
.flexrun-plan .edge.diff-removed{stroke:#c62828;stroke-dasharray:6 4;opacity:.5}\
.flexrun-plan .arrowhead{fill:#757575}";

/// How an element of the drawing relates to the base version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Added,
    Changed,
    Removed,
    Same,
}

impl Mark {
    fn class(self) -> &'static str {
        match self {
            Mark::Added => "diff-added",
            Mark::Changed => "diff-changed",
            Mark::Removed => "diff-removed",
            Mark::Same => "diff-same",
        }
    }
}

struct DrawnNode<'a> {
    id: &'a str,
    capability: &'a str,
    mark: Mark,
}

struct DrawnEdge {
    edge: PlanEdge,
    mark: Mark,
}

/// `plan` as an SVG document; with `base`, every node and edge is marked with how it differs
/// from `base`, and what `plan` removed from `base` is drawn as ghosts. Byte-identical output
/// for the same input.
pub(crate) fn render_svg(plan: &PlanGraph, base: Option<&PlanGraph>) -> String {
    let (nodes, edges) = union(plan, base);
    let placed = place(&nodes, &edges);
    write_svg(
        plan.version(),
        base.map(PlanGraph::version),
        &nodes,
        &edges,
        &placed,
    )
}

/// The nodes and edges to draw: `plan`'s in its order, then those only in `base`.
fn union<'a>(
    plan: &'a PlanGraph,
    base: Option<&'a PlanGraph>,
) -> (Vec<DrawnNode<'a>>, Vec<DrawnEdge>) {
    let diff = base.map(|b| b.diff(plan)).unwrap_or_default();
    let added: BTreeSet<&str> = diff.added_nodes.iter().map(String::as_str).collect();
    let changed: BTreeSet<&str> = diff.changed_nodes.iter().map(String::as_str).collect();
    let added_edges: BTreeSet<&PlanEdge> = diff.added_edges.iter().collect();
    let drawn = |node: &'a PlanNode, mark: Mark| DrawnNode {
        id: &node.id,
        capability: &node.capability_id,
        mark,
    };

    let mut nodes: Vec<DrawnNode<'a>> = plan
        .nodes()
        .map(|n| {
            let mark = if added.contains(n.id.as_str()) {
                Mark::Added
            } else if changed.contains(n.id.as_str()) {
                Mark::Changed
            } else {
                Mark::Same
            };
            drawn(n, mark)
        })
        .collect();
    let removed = base
        .into_iter()
        .flat_map(|b| diff.removed_nodes.iter().filter_map(|id| b.node(id)));
    nodes.extend(removed.map(|n| drawn(n, Mark::Removed)));

    let mut edges: Vec<DrawnEdge> = plan
        .edges()
        .into_iter()
        .map(|edge| {
            let mark = if added_edges.contains(&edge) {
                Mark::Added
            } else {
                Mark::Same
            };
            DrawnEdge { edge, mark }
        })
        .collect();
    edges.extend(diff.removed_edges.iter().map(|edge| DrawnEdge {
        edge: edge.clone(),
        mark: Mark::Removed,
    }));
    (nodes, edges)
}

/// Where the layout put things, in layout coordinates.
#[derive(Debug, Default)]
struct Placed {
    /// Top-left corner and size of node `i`'s box.
    boxes: BTreeMap<usize, (Point, Point)>,
    /// Cubic Bézier segments `(start, control 1, control 2, end)` of edge `j`, from its `from`
    /// to its `to` node.
    paths: BTreeMap<usize, Vec<[Point; 4]>>,
}

fn box_size(node: &DrawnNode<'_>) -> Point {
    let chars = |s: &str| s.chars().count() as f64;
    let width =
        (chars(node.id) * ID_CHAR_WIDTH).max(chars(node.capability) * CAP_CHAR_WIDTH) + BOX_PADDING;
    Point::new(width.max(MIN_BOX_WIDTH), BOX_HEIGHT)
}

/// Lays the nodes and edges out top to bottom.
fn place(nodes: &[DrawnNode<'_>], edges: &[DrawnEdge]) -> Placed {
    let mut recorder = Placed::default();
    if nodes.is_empty() {
        return recorder;
    }
    let mut graph = VisualGraph::new(Orientation::TopToBottom);
    let mut handles = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let element = Element::create_with_properties(
            ShapeKind::new_box(node.id),
            StyleAttr::simple(),
            Orientation::TopToBottom,
            box_size(node),
            node_token(i),
        );
        handles.insert(node.id, graph.add_node(element));
    }
    for (j, drawn) in edges.iter().enumerate() {
        let (Some(&from), Some(&to)) = (
            handles.get(drawn.edge.from.as_str()),
            handles.get(drawn.edge.to.as_str()),
        ) else {
            continue;
        };
        let arrow = Arrow {
            properties: Some(edge_token(j)),
            ..Arrow::default()
        };
        graph.add_edge(arrow, from, to);
    }
    graph.do_it(false, false, false, &mut recorder);
    recorder
}

fn node_token(i: usize) -> String {
    format!("n{i}")
}

fn edge_token(j: usize) -> String {
    format!("e{j}")
}

fn token(properties: Option<&str>, prefix: char) -> Option<usize> {
    properties?.strip_prefix(prefix)?.parse().ok()
}

fn reflect(point: Point, about: Point) -> Point {
    Point::new(2.0 * about.x - point.x, 2.0 * about.y - point.y)
}

/// Records what the layout draws; the SVG is written afterwards by [`write_svg`].
impl RenderBackend for Placed {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        if let Some(i) = token(properties.as_deref(), 'n') {
            self.boxes.insert(i, (xy, size));
        }
    }

    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}

    /// `path` is `[(start, exit control), (entry control, point), …]`: an SVG `M … C … S …`
    /// chain. Stored as explicit cubic segments, turned around when the layout reversed the
    /// edge to break a cycle (its head is then at the start).
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        let Some(j) = token(properties.as_deref(), 'e') else {
            return;
        };
        let mut segments = Vec::with_capacity(path.len().saturating_sub(1));
        let (mut at, mut exit) = match path.first() {
            Some(&(start, control)) => (start, control),
            None => return,
        };
        for &(entry, point) in &path[1..] {
            segments.push([at, exit, entry, point]);
            exit = reflect(entry, point);
            at = point;
        }
        if head == (true, false) {
            segments.reverse();
            for s in &mut segments {
                s.reverse();
            }
        }
        self.paths.insert(j, segments);
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

/// Text for an XML attribute or element: the five special characters as entities, and the
/// characters XML 1.0 cannot carry at all (most controls) as U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate with one decimal, shifted by `offset`; `-0.0` comes out as `0.0`.
fn num(value: f64, offset: f64) -> String {
    let v = ((value + offset) * 10.0).round() / 10.0;
    format!("{:.1}", if v == 0.0 { 0.0 } else { v })
}

fn write_svg(
    version: u32,
    base: Option<u32>,
    nodes: &[DrawnNode<'_>],
    edges: &[DrawnEdge],
    placed: &Placed,
) -> String {
    let points = placed
        .boxes
        .values()
        .flat_map(|&(xy, size)| [xy, xy.add(size)])
        .chain(placed.paths.values().flatten().flatten().copied());
    let (mut min, mut max) = (Point::splat(f64::INFINITY), Point::splat(f64::NEG_INFINITY));
    for p in points {
        min = Point::new(min.x.min(p.x), min.y.min(p.y));
        max = Point::new(max.x.max(p.x), max.y.max(p.y));
    }
    if !min.x.is_finite() {
        (min, max) = (Point::zero(), Point::zero());
    }
    let (dx, dy) = (MARGIN - min.x, MARGIN - min.y);
    let width = (max.x - min.x + 2.0 * MARGIN).ceil();
    let height = (max.y - min.y + 2.0 * MARGIN).ceil();

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flexrun-plan\" data-version=\"{version}\""
    );
    if let Some(base) = base {
        let _ = write!(svg, " data-base=\"{base}\"");
    }
    let _ = writeln!(
        svg,
        " viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\">"
    );
    let _ = writeln!(svg, "<style>{STYLE}</style>");
    let _ = writeln!(
        svg,
        "<defs><marker id=\"{ARROW_MARKER}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
         markerUnits=\"userSpaceOnUse\" markerWidth=\"9\" markerHeight=\"9\" orient=\"auto\">\
         <path class=\"arrowhead\" d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>"
    );
    for (j, drawn) in edges.iter().enumerate() {
        let Some(segments) = placed.paths.get(&j) else {
            continue;
        };
        let mut d = String::new();
        if let Some(first) = segments.first() {
            let _ = write!(d, "M{},{}", num(first[0].x, dx), num(first[0].y, dy));
        }
        for [_, c1, c2, end] in segments {
            let _ = write!(
                d,
                " C{},{} {},{} {},{}",
                num(c1.x, dx),
                num(c1.y, dy),
                num(c2.x, dx),
                num(c2.y, dy),
                num(end.x, dx),
                num(end.y, dy)
            );
        }
        let _ = writeln!(
            svg,
            "<path class=\"edge {}\" data-from=\"{}\" data-to=\"{}\" d=\"{d}\" marker-end=\"url(#{ARROW_MARKER})\"/>",
            drawn.mark.class(),
            escape(&drawn.edge.from),
            escape(&drawn.edge.to),
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let Some(&(xy, size)) = placed.boxes.get(&i) else {
            continue;
        };
        let (id, cap) = (escape(node.id), escape(node.capability));
        let center_x = xy.x + size.x / 2.0;
        let center_y = xy.y + size.y / 2.0;
        let _ = writeln!(
            svg,
            "<g class=\"node {}\" data-node-id=\"{id}\" data-capability=\"{cap}\">\
             <title>{id} ({cap})</title>\
             <rect rx=\"6\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{id}</text>\
             <text class=\"cap\" x=\"{}\" y=\"{}\">{cap}</text></g>",
            node.mark.class(),
            num(xy.x, dx),
            num(xy.y, dy),
            num(size.x, 0.0),
            num(size.y, 0.0),
            num(center_x, dx),
            num(center_y - 2.0, dy),
            num(center_x, dx),
            num(center_y + 13.0, dy),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::graph::PlanSnapshot;
    use crate::graph::testing::node;

    /// A stored plan version (so ids need not follow the identifier grammar).
    fn plan(version: u32, nodes: Vec<PlanNode>, edges: &[(&str, &str)]) -> PlanGraph {
        let mut edges: Vec<PlanEdge> = edges.iter().map(|(a, b)| PlanEdge::new(*a, *b)).collect();
        edges.sort();
        PlanGraph::from_snapshot(&PlanSnapshot {
            version,
            nodes,
            edges,
            system_instructions: String::new(),
            rationale: String::new(),
        })
        .expect("valid test plan")
    }

    fn simple(version: u32, ids: &[&str], edges: &[(&str, &str)]) -> PlanGraph {
        plan(version, ids.iter().map(|id| node(id)).collect(), edges)
    }

    /// The opening tag of the node element for `id`, which must occur exactly once.
    fn node_tag<'a>(svg: &'a str, id: &str) -> &'a str {
        let needle = format!("data-node-id=\"{id}\"");
        assert_eq!(svg.matches(&needle).count(), 1, "{id} once in\n{svg}");
        let at = svg.find(&needle).unwrap();
        let start = svg[..at].rfind("<g ").unwrap();
        &svg[start..at + svg[at..].find('>').unwrap() + 1]
    }

    fn edge_tag<'a>(svg: &'a str, from: &str, to: &str) -> &'a str {
        let needle = format!("data-from=\"{from}\" data-to=\"{to}\"");
        assert_eq!(
            svg.matches(&needle).count(),
            1,
            "{from}→{to} once in\n{svg}"
        );
        let at = svg.find(&needle).unwrap();
        let start = svg[..at].rfind("<path ").unwrap();
        &svg[start..at + svg[at..].find("/>").unwrap() + 2]
    }

    /// Every tag closes, in order, and only the expected elements occur.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(at) = rest.find('<') {
            let end = rest[at..].find('>').expect("tag ends") + at;
            let tag = &rest[at + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "close of {name}");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap();
                assert!(
                    ["svg", "style", "defs", "marker", "g", "title", "text"].contains(&name),
                    "unexpected element {name}"
                );
                open.push(name);
            }
        }
        assert!(open.is_empty(), "unclosed {open:?}");
        assert!(rest.trim().is_empty());
    }

    /// Renders through `rsvg-convert` when it is installed.
    fn assert_renders(svg: &str) {
        let Ok(mut child) = Command::new("rsvg-convert")
            .args(["--format", "png"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(svg.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rsvg-convert: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.starts_with(b"\x89PNG"));
    }

    #[test]
    fn without_a_base_every_node_and_edge_is_drawn_once_as_same() {
        let p = simple(1, &["a", "b", "c"], &[("a", "b"), ("a", "c")]);
        let svg = render_svg(&p, None);
        assert!(
            svg.starts_with(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"flexrun-plan\" data-version=\"1\" viewBox=\"0 0 "
            ),
            "{svg}"
        );
        assert!(!svg.contains("data-base"));
        for id in ["a", "b", "c"] {
            assert_eq!(
                node_tag(&svg, id),
                format!(
                    "<g class=\"node diff-same\" data-node-id=\"{id}\" data-capability=\"cap.{id}\">"
                )
            );
            assert!(svg.contains(&format!("<title>{id} (cap.{id})</title>")));
        }
        for (from, to) in [("a", "b"), ("a", "c")] {
            let tag = edge_tag(&svg, from, to);
            assert!(tag.starts_with("<path class=\"edge diff-same\" "), "{tag}");
            assert!(tag.contains(" d=\"M"), "{tag}");
            assert!(
                tag.ends_with("marker-end=\"url(#flexrun-plan-arrow)\"/>"),
                "{tag}"
            );
        }
        assert_eq!(svg.matches("<g class=\"node").count(), 3);
        assert_eq!(svg.matches("<path class=\"edge").count(), 2);
        assert!(!svg.contains(" id=\"node"), "no ids on nodes");
        assert_well_formed(&svg);
        assert_renders(&svg);
    }

    #[test]
    fn a_diff_marks_added_changed_and_removed_and_draws_ghosts() {
        let base = simple(
            1,
            &["a", "b", "c", "gone"],
            &[("a", "b"), ("b", "c"), ("a", "gone")],
        );
        let mut b = node("b");
        b.rationale = "sharper".into();
        let newer = plan(
            2,
            vec![node("a"), b, node("c"), node("qa")],
            &[("a", "b"), ("b", "qa"), ("qa", "c")],
        );
        let svg = render_svg(&newer, Some(&base));
        assert!(svg.contains(" data-version=\"2\" data-base=\"1\" viewBox=\"0 0 "));
        let class = |id| {
            let tag = node_tag(&svg, id);
            tag["<g class=\"node ".len()..tag.find("\" data-node-id").unwrap()].to_owned()
        };
        assert_eq!(
            ["a", "b", "c", "qa", "gone"].map(class),
            [
                "diff-same",
                "diff-changed",
                "diff-same",
                "diff-added",
                "diff-removed"
            ]
        );
        let edge_class = |(from, to)| {
            let tag = edge_tag(&svg, from, to);
            tag["<path class=\"edge ".len()..tag.find("\" data-from").unwrap()].to_owned()
        };
        assert_eq!(
            [
                ("a", "b"),
                ("b", "qa"),
                ("qa", "c"),
                ("b", "c"),
                ("a", "gone")
            ]
            .map(edge_class),
            [
                "diff-same",
                "diff-added",
                "diff-added",
                "diff-removed",
                "diff-removed"
            ]
        );
        assert_eq!(svg.matches("<g class=\"node").count(), 5);
        assert_eq!(svg.matches("<path class=\"edge").count(), 5);
        assert_well_formed(&svg);
        assert_renders(&svg);
    }

    #[test]
    fn against_an_identical_base_everything_is_same() {
        let p = simple(2, &["a", "b"], &[("a", "b")]);
        let base = simple(1, &["a", "b"], &[("a", "b")]);
        let svg = render_svg(&p, Some(&base));
        for id in ["a", "b"] {
            assert!(node_tag(&svg, id).contains("diff-same"));
        }
        assert!(edge_tag(&svg, "a", "b").contains("diff-same"));
        for marked in ["node diff-added", "node diff-removed", "node diff-changed"] {
            assert!(!svg.contains(marked), "{marked}");
        }
        for marked in ["edge diff-added", "edge diff-removed"] {
            assert!(!svg.contains(marked), "{marked}");
        }
    }

    /// The `y` of the box drawing `id`.
    fn box_top(svg: &str, id: &str) -> f64 {
        let tag = node_tag(svg, id);
        let inside = &svg[svg.find(tag).unwrap() + tag.len()..];
        let y = &inside[inside.find(" y=\"").unwrap() + 4..];
        y[..y.find('"').unwrap()].parse().unwrap()
    }

    /// The `y` where the edge's path starts.
    fn path_start_y(tag: &str) -> f64 {
        let d = &tag[tag.find(" d=\"M").unwrap() + 5..];
        let (_, rest) = d.split_once(',').unwrap();
        rest.split(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_removed_edge_against_a_new_one_is_drawn_from_its_own_source() {
        let base = simple(1, &["a", "b"], &[("a", "b")]);
        let newer = simple(2, &["a", "b"], &[("b", "a")]);
        let svg = render_svg(&newer, Some(&base));
        let forward = edge_tag(&svg, "a", "b");
        let backward = edge_tag(&svg, "b", "a");
        assert!(forward.contains("diff-removed") && backward.contains("diff-added"));
        let on_box = |y: f64, id| {
            let top = box_top(&svg, id);
            (top - 1.0..=top + BOX_HEIGHT + 1.0).contains(&y)
        };
        assert!(
            on_box(path_start_y(forward), "a"),
            "a→b starts at a: {forward}"
        );
        assert!(
            on_box(path_start_y(backward), "b"),
            "b→a starts at b: {backward}"
        );
        assert_well_formed(&svg);
    }

    #[test]
    fn hostile_ids_are_escaped_everywhere() {
        let evil = "x\"><script>alert('&')</script>";
        let mut n = node(evil);
        n.capability_id = "cap<&>\"'".into();
        let p = plan(1, vec![node("a"), n], &[("a", evil)]);
        let svg = render_svg(&p, None);
        assert!(!svg.contains("<script"), "{svg}");
        let escaped = "x&quot;&gt;&lt;script&gt;alert(&apos;&amp;&apos;)&lt;/script&gt;";
        let tag = node_tag(&svg, escaped);
        assert!(
            tag.contains("data-capability=\"cap&lt;&amp;&gt;&quot;&apos;\""),
            "{tag}"
        );
        assert!(svg.contains(&format!(
            "<title>{escaped} (cap&lt;&amp;&gt;&quot;&apos;)</title>"
        )));
        assert!(svg.contains(&format!(">{escaped}</text>")));
        edge_tag(&svg, "a", escaped);
        assert_eq!(escape("a\u{1}b\tc"), "a\u{fffd}b\tc");
        assert_well_formed(&svg);
        assert_renders(&svg);
    }

    #[test]
    fn the_same_input_renders_byte_identical() {
        let base = simple(
            1,
            &["a", "b", "c", "d"],
            &[("a", "b"), ("a", "c"), ("c", "d")],
        );
        let newer = simple(
            2,
            &["a", "b", "c", "e"],
            &[("a", "b"), ("a", "c"), ("b", "e"), ("c", "e")],
        );
        let first = render_svg(&newer, Some(&base));
        for _ in 0..5 {
            assert_eq!(render_svg(&newer, Some(&base)), first);
        }
    }

    #[test]
    fn a_single_node_plan_renders() {
        let svg = render_svg(&simple(1, &["only"], &[]), None);
        node_tag(&svg, "only");
        assert_eq!(svg.matches("<path class=\"edge").count(), 0);
        assert_well_formed(&svg);
        assert_renders(&svg);
    }

    #[test]
    fn a_wide_fan_out_and_a_long_chain_render() {
        let ids: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        let mut nodes = vec![node("root")];
        nodes.extend(ids.iter().map(|id| node(id)));
        let edges: Vec<(&str, &str)> = ids.iter().map(|id| ("root", id.as_str())).collect();
        let fan = render_svg(&plan(1, nodes, &edges), None);
        assert_eq!(fan.matches("<g class=\"node").count(), 101);
        assert_eq!(fan.matches("<path class=\"edge").count(), 100);
        assert_well_formed(&fan);

        let ids: Vec<String> = (0..200).map(|i| format!("s{i:03}")).collect();
        let edges: Vec<(&str, &str)> = ids
            .windows(2)
            .map(|w| (w[0].as_str(), w[1].as_str()))
            .collect();
        let chain = render_svg(
            &plan(1, ids.iter().map(|id| node(id)).collect(), &edges),
            None,
        );
        assert_eq!(chain.matches("<g class=\"node").count(), 200);
        assert_eq!(chain.matches("<path class=\"edge").count(), 199);
        assert_well_formed(&chain);
        assert_renders(&chain);
    }
}
