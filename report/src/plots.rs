//! The report's figures, drawn with plotters into PNG files.
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core` by default, or the
//! file named by `VKV_REPORT_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// Where the font is looked for when `VKV_REPORT_FONT` is not set.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const SIZE: (u32, u32) = (1100, 620);
const FONT: &str = "sans-serif";

/// Loads the font once; every figure needs it.
pub fn load_font() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("VKV_REPORT_FONT").map(PathBuf::from).unwrap_or_else(|| DEFAULT_FONT.into());
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "cannot read the font {} ({e}): install Debian's fonts-dejavu-core or set VKV_REPORT_FONT \
                     to a .ttf file",
                    path.display()
                )
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a TrueType font", path.display()))
        })
        .clone()
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a figure: {e}")
}

/// One group of bars (one x position) in a grouped bar chart.
pub struct BarGroup {
    /// The label under the group.
    pub label: String,
    /// One bar per series: (value, optional upper marker such as a p99).
    pub bars: Vec<(f64, Option<f64>)>,
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Grouped bars, one panel per entry of `panels` (title, groups), side by side; `series` names
/// the bars of each group, `marker` the upper marker (drawn as a short black line).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[&str],
    marker: Option<&str>,
    panels: &[(String, Vec<BarGroup>)],
) -> Result<(), String> {
    load_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 24)).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let y_max = panels
        .iter()
        .flat_map(|(_, groups)| groups.iter().flat_map(|g| g.bars.iter().map(|&(v, m)| v.max(m.unwrap_or(0.0)))))
        .fold(1.0f64, f64::max)
        * 1.1;
    for (area, (panel_title, groups)) in areas.iter().zip(panels) {
        let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(panel_title, (FONT, 18))
            .margin(10)
            .x_label_area_size(70)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..groups.len() as f64 - 0.5, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len().max(1) * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_style((FONT, 12))
            .y_desc(y_label)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let k = series.len().max(1) as f64;
        let width = 0.8 / k;
        for (s, name) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            // Each bar of this series: its left edge, value and marker.
            let bars: Vec<(f64, f64, Option<f64>)> = groups
                .iter()
                .enumerate()
                .filter_map(|(g, group)| {
                    let (v, m) = *group.bars.get(s)?;
                    Some((g as f64 - 0.4 + s as f64 * width, v, m))
                })
                .collect();
            let rects =
                bars.iter().map(|&(x0, v, _)| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled()));
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
            let markers = bars.iter().filter_map(|&(x0, _, m)| {
                m.map(|m| PathElement::new(vec![(x0, m), (x0 + width * 0.9, m)], BLACK.stroke_width(2)))
            });
            chart.draw_series(markers).map_err(err)?;
        }
        let mut legend = chart.configure_series_labels();
        legend.background_style(WHITE.mix(0.85)).border_style(BLACK).label_font((FONT, 13));
        legend.position(SeriesLabelPosition::UpperLeft).draw().map_err(err)?;
    }
    if let Some(marker) = marker {
        root.draw(&Text::new(
            format!("black line on each bar: {marker}"),
            (20, SIZE.1 as i32 - 70),
            (FONT, 13).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One series of a scatter plot.
pub struct Points {
    /// Legend name.
    pub name: String,
    /// (x, y, label drawn next to the point).
    pub points: Vec<(f64, f64, String)>,
}

/// A scatter plot of `series`, with the line y = `diagonal` · x when given.
pub fn scatter(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Points],
    diagonal: Option<(f64, &str)>,
) -> Result<(), String> {
    load_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.0).fold(1.0f64, f64::max) * 1.1;
    let y_max = all().map(|p| p.1).fold(1.0f64, f64::max).max(diagonal.map_or(0.0, |(k, _)| k * x_max)) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    if let Some((k, name)) = diagonal {
        chart
            .draw_series(LineSeries::new(vec![(0.0, 0.0), (x_max, k * x_max)], BLACK.mix(0.5).stroke_width(1)))
            .map_err(err)?
            .label(name)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.mix(0.5)));
    }
    for (s, points) in series.iter().enumerate() {
        let color = PALETTE[s % PALETTE.len()];
        chart
            .draw_series(points.points.iter().map(|&(x, y, _)| Circle::new((x, y), 5, color.filled())))
            .map_err(err)?
            .label(points.name.as_str())
            .legend(move |(x, y)| Circle::new((x + 6, y), 5, color.filled()));
        chart
            .draw_series(
                points
                    .points
                    .iter()
                    .filter(|p| !p.2.is_empty())
                    .map(|(x, y, label)| Text::new(label.clone(), (*x, *y), (FONT, 11).into_font().color(&BLACK))),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds of figure render to a non-trivial PNG (needs the font: fonts-dejavu-core).
    #[test]
    fn figures_render_to_png() {
        let dir = tempfile::tempdir().unwrap();
        let bars = dir.path().join("bars.png");
        let groups = vec![
            BarGroup { label: "a".into(), bars: vec![(1.0, Some(2.0)), (3.0, None)] },
            BarGroup { label: "b".into(), bars: vec![(2.0, Some(2.5)), (1.0, Some(4.0))] },
        ];
        grouped_bars(&bars, "t", "ms", &["x", "y"], Some("p99"), &[("p".into(), groups)]).unwrap();
        let points = dir.path().join("points.png");
        let series =
            vec![Points { name: "s".into(), points: vec![(1.0, 1.1, "one".into()), (5.0, 4.0, String::new())] }];
        scatter(&points, "t", "x", "y", &series, Some((1.0, "y = x"))).unwrap();
        for p in [bars, points] {
            let bytes = std::fs::read(&p).unwrap();
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5000, "{} is {} bytes", p.display(), bytes.len());
        }
    }
}
