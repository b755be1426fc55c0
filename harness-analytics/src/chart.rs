//! Line and scatter charts as SVG and PNG, drawn with plotters and a font shipped in this
//! crate (DejaVu Sans, `assets/`), so no system font library is needed.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::Error;

/// DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Chart size in pixels.
pub const SIZE: (u32, u32) = (900, 540);

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line (or set of points) of a chart.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// `(x, y)` points, drawn in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (e.g. p99 beside a solid p50).
    pub dashed: bool,
    /// Index into the palette, so related series share a colour.
    pub color: usize,
    /// Points only, no line.
    pub points_only: bool,
}

impl Series {
    /// A solid line.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>, color: usize) -> Self {
        Series {
            label: label.into(),
            points,
            dashed: false,
            color,
            points_only: false,
        }
    }

    /// This series dashed.
    #[must_use]
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    /// This series as points without a line.
    #[must_use]
    pub fn points_only(mut self) -> Self {
        self.points_only = true;
        self
    }
}

/// A chart: title, axis labels and series.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Chart {
    /// A file-safe name, e.g. `ttft`.
    pub name: String,
    /// The title.
    pub title: String,
    /// The x axis label.
    pub x_label: String,
    /// The y axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// A logarithmic x axis (concurrency sweeps 1, 2, 4, ... 1024).
    pub log_x: bool,
}

impl Chart {
    /// An empty chart.
    pub fn new(
        name: impl Into<String>,
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Chart {
            name: name.into(),
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            log_x: false,
        }
    }

    /// Whether any series has a point.
    pub fn has_data(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }

    /// The chart as an SVG document.
    ///
    /// # Errors
    /// [`Error::Chart`] when drawing fails (e.g. no finite point).
    pub fn svg(&self) -> Result<String, Error> {
        register_font();
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// The chart as a PNG image.
    ///
    /// # Errors
    /// [`Error::Chart`] when drawing or encoding fails.
    pub fn png(&self) -> Result<Vec<u8>, Error> {
        register_font();
        let (w, h) = SIZE;
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| self.err(e))?;
        }
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().map_err(|e| self.err(e))?;
            writer.write_image_data(&rgb).map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Chart {
            chart: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// The distinct x values of the points, ascending.
    fn x_values(&self) -> Vec<f64> {
        let mut xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|(x, _)| *x))
            .filter(|x| x.is_finite() && (!self.log_x || *x > 0.0))
            .collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs
    }

    fn bounds(&self) -> Option<((f64, f64), (f64, f64))> {
        let pts = self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_x || *x > 0.0));
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        let mut any = false;
        for &(x, y) in pts {
            any = true;
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !any {
            return None;
        }
        if x1 <= x0 {
            let pad = if x0 == 0.0 { 1.0 } else { x0.abs() * 0.1 };
            x0 -= pad;
            x1 += pad;
            if self.log_x {
                x0 = x0.max(x1 / 10.0);
            }
        }
        // Latencies and throughputs start at zero, so differences are not exaggerated.
        let y0 = y0.min(0.0);
        let y1 = if y1 <= y0 { y0 + 1.0 } else { y1 * 1.08 };
        Some(((x0, x1), (y0, y1)))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), Error>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| self.err(e))?;
        let ((x0, x1), (y0, y1)) = self
            .bounds()
            .ok_or_else(|| self.err("no finite data point to draw"))?;
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(&self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70);
        // The log and linear charts are different types; the same calls draw both.
        macro_rules! mesh_and_series {
            ($x:expr) => {{
                let mut chart = builder
                    .build_cartesian_2d($x, y0..y1)
                    .map_err(|e| self.err(e))?;
                chart
                    .configure_mesh()
                    .x_desc(&self.x_label)
                    .y_desc(&self.y_label)
                    .x_label_formatter(&|x| trim_number(*x))
                    .y_label_formatter(&|y| trim_number(*y))
                    .light_line_style(RGBColor(245, 245, 245))
                    .label_style(("sans-serif", 14))
                    .axis_desc_style(("sans-serif", 16))
                    .draw()
                    .map_err(|e| self.err(e))?;
                self.draw_series(&mut chart)?;
            }};
        }
        // A log axis is ticked at the swept values (1, 4, 16, not 1 to 10) when there are few
        // enough to read.
        let ticks = self.x_values();
        match (self.log_x, (2..=16).contains(&ticks.len())) {
            (true, true) => mesh_and_series!((x0..x1).log_scale().with_key_points(ticks)),
            (true, false) => mesh_and_series!((x0..x1).log_scale()),
            (false, _) => mesh_and_series!(x0..x1),
        }
        Ok(())
    }

    fn draw_series<'a, DB, X>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    ) -> Result<(), Error>
    where
        DB: DrawingBackend + 'a,
        DB::ErrorType: 'static,
        X: Ranged<ValueType = f64>,
    {
        for s in &self.series {
            let color = PALETTE[s.color % PALETTE.len()];
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_x || *x > 0.0))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = ShapeStyle::from(color).stroke_width(2);
            let anno = if s.points_only {
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                    .map_err(|e| self.err(e))?
            } else if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                    .map_err(|e| self.err(e))?
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(|e| self.err(e))?
            };
            anno.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
            if !s.points_only {
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| self.err(e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// `4` rather than `4.0`; at most three decimals.
fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn register_font() {
    REGISTER.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the bundled chart font could not be loaded; text will be missing");
        }
    });
}

/// The points of `(x, y)` not dominated by another (higher x and higher y both better),
/// sorted by x: the Pareto front.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    // Highest x first; keep a point when its y beats every point with a higher x.
    pts.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut front = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for p in pts {
        if p.1 > best_y {
            front.push(p);
            best_y = p.1;
        }
    }
    front.reverse();
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let pts = [(1.0, 10.0), (2.0, 8.0), (1.5, 5.0), (3.0, 2.0), (2.5, 1.0)];
        assert_eq!(
            pareto_front(&pts),
            vec![(1.0, 10.0), (2.0, 8.0), (3.0, 2.0)]
        );
    }

    #[test]
    fn svg_and_png_have_content_and_text() {
        let mut c = Chart::new("t", "TTFT p50", "concurrency", "ms");
        c.log_x = true;
        c.series.push(Series::line(
            "128/32",
            vec![(1.0, 20.0), (4.0, 22.0), (16.0, 30.0)],
            0,
        ));
        c.series.push(
            Series::line(
                "128/32 p99",
                vec![(1.0, 25.0), (4.0, 28.0), (16.0, 40.0)],
                0,
            )
            .dashed(),
        );
        let svg = c.svg().expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("TTFT p50") && svg.contains("concurrency"));
        let png = c.png().expect("png");
        assert_eq!(&png[1..4], b"PNG");
        let empty = Chart::new("e", "nothing", "x", "y");
        assert!(empty.svg().is_err());
    }

    /// A log axis of concurrency 1, 4, 16 is ticked at 1, 4 and 16 (a plain log axis has
    /// ticks 1 to 10 and none at 16).
    #[test]
    fn a_log_axis_is_ticked_at_the_swept_values() {
        let mut c = Chart::new("t", "TTFT", "concurrency", "ms");
        c.log_x = true;
        c.series.push(Series::line(
            "a",
            vec![(1.0, 200.0), (4.0, 220.0), (16.0, 300.0)],
            0,
        ));
        let svg = c.svg().expect("svg");
        let texts: Vec<&str> = svg
            .split("</text>")
            .filter_map(|t| t.rsplit_once('>').map(|(_, text)| text.trim()))
            .collect();
        // The y axis (0 to 300) has its own ticks; the x axis exactly the swept values.
        let small: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| t.parse::<f64>().is_ok_and(|v| v > 0.0 && v < 50.0))
            .collect();
        assert_eq!(small, ["1", "4", "16"], "{texts:?}");
    }
}
