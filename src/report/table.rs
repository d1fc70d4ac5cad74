//! The report's tables, built once from a [`Report`] and rendered by each format.

use super::Report;

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

/// Cells of figures, as cells.
fn cells(figures: Vec<Option<String>>) -> Vec<Cell> {
    figures.into_iter().map(|t| t.map_or_else(Cell::none, Cell::text)).collect()
}

/// The best checkpoint, and the SWA model with stored and with recalibrated statistics (its score
/// emphasised), and the soup where there is one.
pub fn summary(r: &Report) -> Table {
    use Align::*;
    let columns = r.task.columns();
    let mut header = vec!["model".to_string()];
    header.extend(columns.iter().map(|c| c.header.clone()));
    let row =
        |name: Cell, figures: Vec<Option<String>>| std::iter::once(name).chain(cells(figures)).collect::<Vec<_>>();
    let mut recalibrated = row(Cell::strong("SWA, recalibrated"), r.swa_recalibrated.cells());
    if let Some(score) = recalibrated.get_mut(1 + r.task.score_column()) {
        score.strong = true;
    }
    let mut rows = vec![
        row(
            Cell::text(format!("best checkpoint: {} ({} statistics)", r.best.name, r.best.statistics)),
            r.best.figures.cells(),
        ),
        row(Cell::text("SWA, newest checkpoint's statistics"), r.swa_stored.cells()),
        recalibrated,
    ];
    rows.extend(r.soup.iter().map(|soup| {
        row(
            Cell::text(format!("{} soup of {} ({})", soup.method, soup.ingredients.len(), soup.ingredients.join(", "))),
            soup.eval.cells(),
        )
    }));
    Table { header, align: std::iter::once(Left).chain(columns.iter().map(|_| Right)).collect(), rows }
}

/// A soup's candidates in the order tried: the select score alone and in the soup, kept or not.
pub fn soup(r: &Report) -> Option<Table> {
    use Align::*;
    let soup = r.soup.as_ref()?;
    let score = r.task.score_name();
    Some(Table {
        header: vec![
            "candidate (best alone first)".into(),
            format!("select {score} alone"),
            format!("select {score} in the soup"),
            "kept".into(),
        ],
        align: vec![Left, Right, Right, Center],
        rows: soup
            .candidates
            .iter()
            .map(|c| {
                vec![
                    Cell::text(&c.name),
                    Cell::text(r.task.format_score(c.select_alone)),
                    Cell::text(c.select_in_soup.map_or("–".to_string(), |x| r.task.format_score(x))),
                    Cell::text(if c.kept { "✓" } else { "" }),
                ]
            })
            .collect(),
    })
}

/// Every checkpoint: in the average or not, its figures with stored statistics, and the compact
/// ones with recalibrated statistics ("++").
pub fn checkpoints(r: &Report) -> Table {
    use Align::*;
    let columns = r.task.columns();
    let compact: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].compact).collect();
    let mut header = vec!["checkpoint".to_string(), "in SWA".to_string()];
    header.extend(columns.iter().map(|c| c.header.clone()));
    header.extend(compact.iter().map(|&i| format!("{} ++", columns[i].header)));
    let rows = r
        .checkpoints
        .iter()
        .map(|c| {
            let mut row = vec![Cell::text(&c.name), Cell::text(if r.averaged.contains(&c.name) { "✓" } else { "" })];
            row.extend(cells(c.stored.cells()));
            let recalibrated = c.recalibrated.as_ref().map(|x| x.cells());
            row.extend(compact.iter().map(|&i| match &recalibrated {
                Some(figures) => figures[i].clone().map_or_else(Cell::none, Cell::text),
                None => Cell::text("–"),
            }));
            row
        })
        .collect();
    let mut align = vec![Left, Center];
    align.extend(std::iter::repeat_n(Right, columns.len() + compact.len()));
    Table { header, align, rows }
}

/// Weight space against prediction space: every model of the comparison with its figures and
/// its cost (passes over data, seconds, models to deploy).
pub fn comparison(r: &Report) -> Option<Table> {
    use Align::*;
    if r.comparison.is_empty() {
        return None;
    }
    let columns = r.task.columns();
    let mut header = vec!["model".to_string()];
    header.extend(columns.iter().map(|c| c.header.clone()));
    header.extend(["passes".to_string(), "seconds".to_string(), "models to deploy".to_string()]);
    let rows = r
        .comparison
        .iter()
        .map(|c| {
            let mut row = vec![Cell::text(&c.name)];
            row.extend(cells(c.score.cells()));
            row.push(Cell::text(c.passes.to_string()));
            row.push(c.seconds.map_or_else(|| Cell::text("–"), |s| Cell::text(format!("{s:.2}"))));
            row.push(Cell::text(c.models.to_string()));
            row
        })
        .collect();
    let mut align = vec![Left];
    align.extend(std::iter::repeat_n(Right, columns.len() + 3));
    Some(Table { header, align, rows })
}

/// Seconds per stage.
pub fn timings(r: &Report) -> Table {
    Table {
        header: vec!["stage".into(), "seconds".into()],
        align: vec![Align::Left, Align::Right],
        rows: r.timings.iter().map(|t| vec![Cell::text(&t.stage), Cell::text(format!("{:.2}", t.seconds))]).collect(),
    }
}
