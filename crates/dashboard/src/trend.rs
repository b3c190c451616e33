//! A trend: values per day over the last 30 days, shown as a chart with
//! its numbers beside it (a table, one row a day, each cell's raw value in
//! `data-value` and its id `<trend>-<column>-<YYYY-MM-DD>`).

use crate::chart::{self, Line};
use crate::i18n::{Lang, Msg};
use chrono::NaiveDate;
use maud::{Markup, html};

/// One column: a value per day, shown in `format`.
pub struct Column {
    pub id: &'static str,
    pub label: Msg,
    pub values: Vec<i64>,
    pub format: Format,
}

#[derive(Clone, Copy)]
pub enum Format {
    Items,
    People,
    /// Percent of the column with this index, value by value.
    PercentOf(usize),
}

pub struct Trend {
    pub id: &'static str,
    pub dates: Vec<NaiveDate>,
    pub columns: Vec<Column>,
}

impl Trend {
    fn percent(&self, column: &Column, whole: usize, day: usize) -> Option<f64> {
        let whole = self.columns.get(whole)?.values.get(day).copied().filter(|w| *w > 0)?;
        Some(column.values.get(day).copied().unwrap_or(0) as f64 * 100.0 / whole as f64)
    }

    /// A column's values as the chart draws them (percentages for a rate).
    fn plotted(&self, index: usize) -> Vec<f64> {
        let column = &self.columns[index];
        match column.format {
            Format::PercentOf(whole) => {
                (0..self.dates.len()).map(|day| self.percent(column, whole, day).unwrap_or(0.0)).collect()
            }
            _ => column.values.iter().map(|v| *v as f64).collect(),
        }
    }

    fn cell(&self, lang: Lang, index: usize, day: usize) -> Markup {
        let column = &self.columns[index];
        let value = column.values.get(day).copied().unwrap_or(0);
        let id = format!("{}-{}-{}", self.id, column.id, self.dates[day].format("%Y-%m-%d"));
        let shown = u64::try_from(value).unwrap_or(0);
        match column.format {
            Format::Items => html! { td.num id=(id) data-value=(value) { (lang.items(shown)) } },
            Format::People => html! { td.num id=(id) data-value=(value) { (lang.people(shown)) } },
            Format::PercentOf(whole) => match self.percent(column, whole, day) {
                Some(p) => html! { td.num id=(id) data-value=(format!("{p:.1}")) { (format!("{p:.1}%")) } },
                None => html! { td.num id=(id) { "–" } },
            },
        }
    }

    /// A line chart of the columns at `lines` (`suffix` after the axis's numbers).
    pub fn lines(&self, lang: Lang, chart_id: &str, title: Msg, lines: &[usize], suffix: &str) -> Markup {
        let labels = self.labels(lang);
        let plotted: Vec<Vec<f64>> = lines.iter().map(|i| self.plotted(*i)).collect();
        let series: Vec<Line<'_>> = lines
            .iter()
            .zip(&plotted)
            .map(|(i, values)| Line { name: lang.t(self.columns[*i].label), values })
            .collect();
        chart::line_chart(chart_id, lang.t(title), &labels, &series, suffix, lang.t(Msg::NoData))
    }

    /// A bar chart of the column at `index`.
    pub fn bars(&self, lang: Lang, chart_id: &str, title: Msg, index: usize) -> Markup {
        chart::bar_chart(chart_id, lang.t(title), &self.labels(lang), &self.plotted(index), lang.t(Msg::NoData))
    }

    fn labels(&self, lang: Lang) -> Vec<String> {
        self.dates.iter().map(|d| lang.day(*d)).collect()
    }

    /// The numbers: one row a day, newest first.
    pub fn table(&self, lang: Lang) -> Markup {
        html! {
            table.list.trend id=(self.id) {
                tr {
                    th { (lang.t(Msg::Date)) }
                    @for column in &self.columns { th { (lang.t(column.label)) } }
                }
                @for day in (0..self.dates.len()).rev() {
                    tr data-date=(self.dates[day].format("%Y-%m-%d")) {
                        td { (lang.day(self.dates[day])) }
                        @for index in 0..self.columns.len() { (self.cell(lang, index, day)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trend() -> Trend {
        let dates = ["2026-12-05", "2026-12-06"].iter().filter_map(|d| d.parse().ok()).collect();
        Trend {
            id: "t",
            dates,
            columns: vec![
                Column { id: "friends", label: Msg::Friends, values: vec![0, 40], format: Format::People },
                Column { id: "rate", label: Msg::LinkRate, values: vec![0, 10], format: Format::PercentOf(0) },
            ],
        }
    }

    #[test]
    fn cells_carry_raw_values_and_rates_need_a_whole() {
        let table = trend().table(Lang::Ja).into_string();
        assert!(table.contains(r#"id="t-friends-2026-12-06" data-value="40">40人<"#), "{table}");
        assert!(table.contains(r#"id="t-rate-2026-12-06" data-value="25.0">25.0%<"#), "{table}");
        assert!(table.contains(r#"id="t-rate-2026-12-05">–<"#), "no friends, no rate: {table}");
        assert!(table.find("2026-12-06") < table.find("2026-12-05"), "newest first");
    }

    #[test]
    fn charts_plot_rates_as_percentages() {
        let t = trend();
        assert_eq!(t.plotted(1), [0.0, 25.0]);
        let svg = t.lines(Lang::En, "c", Msg::LinkRate, &[1], "%").into_string();
        assert!(svg.contains("<polyline") && svg.contains("50%"), "{svg}");
    }
}
