//! The SVG plot: new-connection rate (pod -> service) against the number of services, one
//! line per path, services on a log axis.
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use super::measure::Kind;
use super::report::Group;

const SIZE: (u32, u32) = (900, 540);

/// One colour per path, in the order paths first appear.
const COLOURS: [RGBColor; 6] = [
    RGBColor(40, 40, 40),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// The points of each path: (services, median connections/s).
pub fn lines(groups: &[Group]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for g in groups {
        for p in &g.paths {
            let Some(rate) = p.series(Kind::Connect).median else {
                continue;
            };
            let point = (g.services as f64, rate);
            match lines.iter_mut().find(|(name, _)| *name == p.path) {
                Some((_, points)) => points.push(point),
                None => lines.push((p.path.clone(), vec![point])),
            }
        }
    }
    lines
}

/// Renders the plot as SVG text.
pub fn svg(groups: &[Group], title: &str) -> anyhow::Result<String> {
    let lines = lines(groups);
    let max_x = groups
        .iter()
        .map(|g| g.services as f64)
        .fold(10.0, f64::max)
        * 1.5;
    let max_y = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max)
        * 1.15;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((0.7f64..max_x).log_scale(), 0f64..max_y)?;
        chart
            .configure_mesh()
            .x_desc("services (log scale)")
            .y_desc("new TCP connections/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(text)
}

/// Writes the plot as `dataplane-<unix time>.svg` in `dir`.
pub fn write(dir: &Path, unix_time: u64, groups: &[Group], title: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("dataplane-{unix_time}.svg"));
    std::fs::write(&path, svg(groups, title)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::measure::Sample;
    use crate::dataplane::report::PathRun;

    fn group(services: usize, rates: &[(&str, f64)]) -> Group {
        let paths = rates
            .iter()
            .map(|(name, rate)| {
                let mut p = PathRun::new((*name).to_owned());
                p.series_mut(Kind::Connect).median = Some(*rate);
                p.series_mut(Kind::Connect).samples.push(Sample {
                    value: *rate,
                    p50_us: None,
                    p99_us: None,
                    lost_pct: None,
                    errors: 0,
                    first_error: None,
                    proxy_cpu_pct: 0.0,
                });
                p
            })
            .collect();
        Group {
            services,
            build_s: 0.0,
            measure_s: 0.0,
            paths,
        }
    }

    #[test]
    fn one_line_per_path_with_a_point_per_service_count() {
        let groups = [
            group(1, &[("no proxy", 5000.0), ("ebpf", 4800.0)]),
            group(1000, &[("no proxy", 5100.0), ("ebpf", 4700.0)]),
        ];
        let lines = lines(&groups);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            ("ebpf".to_owned(), vec![(1.0, 4800.0), (1000.0, 4700.0)])
        );
        let svg = svg(&groups, "test").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("ebpf") && svg.contains("no proxy"));
    }
}
