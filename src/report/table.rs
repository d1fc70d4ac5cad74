//! The report's tables, built once from a [`Report`] and rendered by each format.

use super::{pct, Report};

/// One cell: its text, and whether it is emphasised. `None` is a value the report does not have
/// (rendered as an empty cell).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The text, or `None` for a value not available.
    pub text: Option<String>,
    /// Emphasised (the recalibrated SWA model's row).
    pub strong: bool,
}

impl Cell {
    fn text(text: impl Into<String>) -> Self {
        Cell { text: Some(text.into()), strong: false }
    }

    fn none() -> Self {
        Cell { text: None, strong: false }
    }

    fn strong(text: impl Into<String>) -> Self {
        Cell { text: Some(text.into()), strong: true }
    }
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// A mark.
    Center,
    /// A number.
    Right,
}

/// A table: header, alignment per column, and rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column titles.
    pub header: Vec<String>,
    /// Alignment per column.
    pub align: Vec<Align>,
    /// Rows of cells.
    pub rows: Vec<Vec<Cell>>,
}

fn loss(x: f64) -> String {
    format!("{x:.4}")
}

/// The best checkpoint, and the SWA model with stored and with recalibrated statistics.
pub fn summary(r: &Report) -> Table {
    use Align::*;
    Table {
        header: vec!["model".into(), "top-1".into(), format!("top-{}", r.k), "loss".into()],
        align: vec![Left, Right, Right, Right],
        rows: [
            vec![
                Cell::text(format!("best checkpoint: {} ({} statistics)", r.best.name, r.best.statistics)),
                Cell::text(pct(r.best.top1)),
                r.best.topk.map_or_else(Cell::none, |x| Cell::text(pct(x))),
                r.best.loss.map_or_else(Cell::none, |x| Cell::text(loss(x))),
            ],
            vec![
                Cell::text("SWA, newest checkpoint's statistics"),
                Cell::text(pct(r.swa_stored.top1)),
                Cell::text(pct(r.swa_stored.topk)),
                Cell::text(loss(r.swa_stored.loss)),
            ],
            vec![
                Cell::strong("SWA, recalibrated"),
                Cell::strong(pct(r.swa_recalibrated.top1)),
                Cell::text(pct(r.swa_recalibrated.topk)),
                Cell::text(loss(r.swa_recalibrated.loss)),
            ],
        ]
        .into_iter()
        .chain(r.soup.iter().map(|soup| {
            vec![
                Cell::text(format!(
                    "{} soup of {} ({})",
                    soup.method,
                    soup.ingredients.len(),
                    soup.ingredients.join(", ")
                )),
                Cell::text(pct(soup.eval.top1)),
                Cell::text(pct(soup.eval.topk)),
                Cell::text(loss(soup.eval.loss)),
            ]
        }))
        .collect(),
    }
}

/// A soup's candidates in the order tried: select accuracy alone and in the soup, kept or not.
pub fn soup(r: &Report) -> Option<Table> {
    use Align::*;
    let soup = r.soup.as_ref()?;
    Some(Table {
        header: ["candidate (best alone first)", "select top-1 alone", "select top-1 in the soup", "kept"]
            .map(String::from)
            .to_vec(),
        align: vec![Left, Right, Right, Center],
        rows: soup
            .candidates
            .iter()
            .map(|c| {
                vec![
                    Cell::text(&c.name),
                    Cell::text(pct(c.select_alone)),
                    Cell::text(c.select_in_soup.map_or("–".to_string(), pct)),
                    Cell::text(if c.kept { "✓" } else { "" }),
                ]
            })
            .collect(),
    })
}

/// Every checkpoint: in the average or not, its stored and recalibrated accuracy and loss.
pub fn checkpoints(r: &Report) -> Table {
    use Align::*;
    let header = ["checkpoint", "in SWA", "top-1", &format!("top-{}", r.k), "loss", "top-1 ++", "loss ++"];
    let rows = r
        .checkpoints
        .iter()
        .map(|c| {
            let (acc, l) =
                c.recalibrated.as_ref().map_or(("–".into(), "–".into()), |x| (pct(x.top1), loss(x.loss)));
            vec![
                Cell::text(&c.name),
                Cell::text(if r.averaged.contains(&c.name) { "✓" } else { "" }),
                Cell::text(pct(c.stored.top1)),
                Cell::text(pct(c.stored.topk)),
                Cell::text(loss(c.stored.loss)),
                Cell::text(acc),
                Cell::text(l),
            ]
        })
        .collect();
    Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        align: vec![Left, Center, Right, Right, Right, Right, Right],
        rows,
    }
}

/// Seconds per stage.
pub fn timings(r: &Report) -> Table {
    Table {
        header: vec!["stage".into(), "seconds".into()],
        align: vec![Align::Left, Align::Right],
        rows: r.timings.iter().map(|t| vec![Cell::text(&t.stage), Cell::text(format!("{:.2}", t.seconds))]).collect(),
    }
}
