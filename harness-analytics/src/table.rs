//! Records to and from Arrow batches, and the summary table of a run.

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt16Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, ListArray, RecordBatch, StringArray, UInt16Array,
    UInt32Array, UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field};

use harness_core::ParamValue;

use crate::Error;
use crate::record::{ErrorKind, Record, TokenSource};
use crate::schema::{ParamType, records_schema, summary_schema};
use crate::stats::CellStats;

/// The records as one Arrow batch in [`records_schema`].
///
/// # Errors
/// [`Error::Arrow`] only if the columns disagree with the schema (a bug).
pub fn records_batch(records: &[Record]) -> Result<RecordBatch, Error> {
    let n = records.len();
    let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
    offsets.push(0);
    let mut gaps: Vec<u64> = Vec::new();
    for r in records {
        gaps.extend_from_slice(&r.chunk_gaps_ns);
        let end = i32::try_from(gaps.len())
            .map_err(|_| Error::invalid("records", "more than 2^31 chunk gaps in one batch"))?;
        offsets.push(end);
    }
    let gaps_field = Arc::new(Field::new_list_field(DataType::UInt64, false));
    let gaps = ListArray::try_new(
        gaps_field,
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(UInt64Array::from(gaps)),
        None,
    )?;
    let ms = |f: fn(&Record) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            records.iter().map(|r| r.index),
        )),
        Arc::new(BooleanArray::from_iter(
            records.iter().map(|r| Some(r.warmup)),
        )),
        Arc::new(UInt64Array::from_iter_values(
            records.iter().map(|r| r.start_ns),
        )),
        Arc::new(UInt64Array::from_iter(
            records.iter().map(|r| r.first_token_ns),
        )),
        Arc::new(UInt64Array::from_iter(
            records.iter().map(|r| r.last_token_ns),
        )),
        Arc::new(UInt64Array::from_iter_values(
            records.iter().map(|r| r.end_ns),
        )),
        Arc::new(gaps),
        Arc::new(UInt32Array::from_iter_values(
            records.iter().map(|r| r.content_chunks),
        )),
        Arc::new(UInt64Array::from_iter_values(
            records.iter().map(|r| r.input_tokens),
        )),
        Arc::new(UInt64Array::from_iter_values(
            records.iter().map(|r| r.output_tokens),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.output_token_source.as_str()),
        )),
        Arc::new(UInt16Array::from_iter(
            records.iter().map(|r| r.http_status),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.error.map(ErrorKind::as_str)),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.error_message.as_deref()),
        )),
        ms(|r| r.ttft_s().map(|s| s * 1e3)),
        ms(|r| r.latency_s().map(|s| s * 1e3)),
        ms(|r| r.itl_s().map(|s| s * 1e3)),
        Arc::new(UInt64Array::from_iter(
            records.iter().map(|r| r.scheduled_ns),
        )),
        Arc::new(BooleanArray::from_iter(
            records.iter().map(|r| Some(r.retried)),
        )),
        Arc::new(UInt64Array::from_iter(
            records.iter().map(|r| r.cached_tokens),
        )),
        Arc::new(UInt64Array::from_iter(records.iter().map(|r| r.session))),
        Arc::new(UInt32Array::from_iter(records.iter().map(|r| r.turn))),
    ];
    Ok(RecordBatch::try_new(records_schema(), columns)?)
}

/// A column of `batch` by name, as type `T`.
fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, Error> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::invalid("records", format!("no column `{name}`")))?;
    c.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::invalid(
            "records",
            format!("column `{name}` has type {}", c.data_type()),
        )
    })
}

/// A column that files written before it existed lack: `None` when absent, an error when
/// present with another type.
fn optional_col<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<Option<&'a T>, Error> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(_) => col(batch, name).map(Some),
    }
}

/// The per-request columns that statistics read, checked once.
pub(crate) struct RecordColumns<'a> {
    pub(crate) warmup: &'a BooleanArray,
    pub(crate) start_ns: &'a UInt64Array,
    pub(crate) end_ns: &'a UInt64Array,
    pub(crate) gaps: &'a ListArray,
    pub(crate) input_tokens: &'a UInt64Array,
    pub(crate) output_tokens: &'a UInt64Array,
    pub(crate) source: &'a StringArray,
    pub(crate) error_kind: &'a StringArray,
    pub(crate) ttft_ms: &'a Float64Array,
    pub(crate) latency_ms: &'a Float64Array,
    pub(crate) itl_ms: &'a Float64Array,
    pub(crate) scheduled_ns: Option<&'a UInt64Array>,
    pub(crate) retried: Option<&'a BooleanArray>,
    pub(crate) cached_tokens: Option<&'a UInt64Array>,
    pub(crate) session: Option<&'a UInt64Array>,
    pub(crate) turn: Option<&'a UInt32Array>,
}

impl<'a> RecordColumns<'a> {
    pub(crate) fn of(batch: &'a RecordBatch) -> Result<Self, Error> {
        Ok(RecordColumns {
            warmup: col(batch, "warmup")?,
            start_ns: col(batch, "start_ns")?,
            end_ns: col(batch, "end_ns")?,
            gaps: col(batch, "chunk_gaps_ns")?,
            input_tokens: col(batch, "input_tokens")?,
            output_tokens: col(batch, "output_tokens")?,
            source: col(batch, "output_token_source")?,
            error_kind: col(batch, "error_kind")?,
            ttft_ms: col(batch, "ttft_ms")?,
            latency_ms: col(batch, "request_latency_ms")?,
            itl_ms: col(batch, "itl_ms")?,
            scheduled_ns: optional_col(batch, "scheduled_ns")?,
            retried: optional_col(batch, "retried")?,
            cached_tokens: optional_col(batch, "cached_tokens")?,
            session: optional_col(batch, "session")?,
            turn: optional_col(batch, "turn")?,
        })
    }
}

/// Records back from a batch in [`records_schema`] (e.g. read from parquet).
///
/// # Errors
/// [`Error::InvalidInput`] naming the column that is missing or has another type, or the
/// row with an unknown error kind or token source.
pub fn records_from_batch(batch: &RecordBatch) -> Result<Vec<Record>, Error> {
    let c = RecordColumns::of(batch)?;
    let index: &UInt64Array = col(batch, "index")?;
    let first: &UInt64Array = col(batch, "first_token_ns")?;
    let last: &UInt64Array = col(batch, "last_token_ns")?;
    let chunks: &UInt32Array = col(batch, "content_chunks")?;
    let status: &UInt16Array = col(batch, "http_status")?;
    let message: &StringArray = col(batch, "error_message")?;
    let opt_u64 = |a: &UInt64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let opt = |a: Option<&UInt64Array>, i: usize| a.and_then(|a| opt_u64(a, i));
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let gaps = c.gaps.value(i);
        let gaps = gaps.as_primitive::<UInt64Type>();
        let source = TokenSource::parse(c.source.value(i)).ok_or_else(|| {
            Error::invalid(
                format!("records row {i}"),
                format!("unknown output_token_source `{}`", c.source.value(i)),
            )
        })?;
        let error = if c.error_kind.is_valid(i) {
            Some(ErrorKind::parse(c.error_kind.value(i)).ok_or_else(|| {
                Error::invalid(
                    format!("records row {i}"),
                    format!("unknown error_kind `{}`", c.error_kind.value(i)),
                )
            })?)
        } else {
            None
        };
        let (start, first_ns, last_ns, end) = (
            c.start_ns.value(i),
            opt_u64(first, i),
            opt_u64(last, i),
            c.end_ns.value(i),
        );
        // Times out of order would wrap in every latency computed from them.
        let ordered = first_ns.is_none_or(|f| f >= start)
            && last_ns.is_none_or(|l| l >= first_ns.unwrap_or(start))
            && end >= start;
        if !ordered {
            return Err(Error::invalid(
                format!("records row {i}"),
                format!(
                    "times out of order: start {start}, first token {first_ns:?}, last token {last_ns:?}, end {end} (ns)"
                ),
            ));
        }
        out.push(Record {
            index: index.value(i),
            warmup: c.warmup.value(i),
            start_ns: start,
            first_token_ns: first_ns,
            last_token_ns: last_ns,
            end_ns: end,
            chunk_gaps_ns: gaps.values().to_vec(),
            content_chunks: chunks.value(i),
            input_tokens: c.input_tokens.value(i),
            output_tokens: c.output_tokens.value(i),
            output_token_source: source,
            http_status: status.is_valid(i).then(|| status.value(i)),
            error,
            error_message: message.is_valid(i).then(|| message.value(i).to_owned()),
            scheduled_ns: c
                .scheduled_ns
                .and_then(|a| a.is_valid(i).then(|| a.value(i))),
            retried: c.retried.is_some_and(|a| a.value(i)),
            cached_tokens: opt(c.cached_tokens, i),
            session: opt(c.session, i),
            turn: c.turn.and_then(|a| a.is_valid(i).then(|| a.value(i))),
        });
    }
    Ok(out)
}

/// One cell of a run, for the summary table.
#[derive(Debug, Clone, PartialEq)]
pub struct CellRow {
    /// The cell id.
    pub cell: String,
    /// Its parameters, e.g. `concurrency = 64`.
    pub params: Vec<(String, ParamValue)>,
    /// `succeeded`, `failed`, ...
    pub status: String,
    /// Its statistics, when it produced some.
    pub stats: Option<CellStats>,
}

/// The parameter columns of `rows`: every name, in first-seen order, typed as a number when
/// every value is one.
pub fn param_columns(rows: &[CellRow]) -> Vec<(String, ParamType)> {
    let mut out: Vec<(String, ParamType)> = Vec::new();
    for row in rows {
        for (name, v) in &row.params {
            let ty = match v {
                ParamValue::Str(_) => ParamType::Text,
                _ => ParamType::Number,
            };
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, t)) if *t != ty => *t = ParamType::Text,
                Some(_) => {}
                None => out.push((name.clone(), ty)),
            }
        }
    }
    out
}

/// The summary table of a run: one row per cell, in [`summary_schema`].
///
/// # Errors
/// [`Error::Arrow`] only if the columns disagree with the schema (a bug).
pub fn summary_batch(
    run_id: &str,
    experiment: &str,
    gpus: Option<u32>,
    rows: &[CellRow],
) -> Result<RecordBatch, Error> {
    let params = param_columns(rows);
    let server: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.stats.as_ref())
        .flat_map(|s| s.server.keys().map(|k| format!("server.{k}")))
        .collect();
    let server: Vec<String> = server.into_iter().collect();
    let schema = summary_schema(&params, &server);
    let text = |f: &dyn Fn(&CellRow) -> Option<String>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let mut columns: Vec<ArrayRef> = vec![
        text(&|_| Some(run_id.to_owned())),
        text(&|_| Some(experiment.to_owned())),
        text(&|r| Some(r.cell.clone())),
        text(&|r| Some(r.status.clone())),
    ];
    for (name, ty) in &params {
        fn value<'r>(r: &'r CellRow, name: &str) -> Option<&'r ParamValue> {
            r.params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
        }
        columns.push(match ty {
            ParamType::Number => {
                let mut b = Float64Builder::new();
                for r in rows {
                    b.append_option(value(r, name).and_then(ParamValue::as_f64));
                }
                Arc::new(b.finish())
            }
            _ => text(&|r| value(r, name).map(ToString::to_string)),
        });
    }
    let mut g = UInt32Builder::new();
    for _ in rows {
        g.append_option(gpus);
    }
    columns.push(Arc::new(g.finish()));
    columns.push(text(&|r| {
        r.stats.as_ref().and_then(CellStats::main_token_source)
    }));
    // Every metric column after these, by name, from the cell's statistics.
    for field in schema.fields().iter().skip(columns.len()) {
        let name = field.name();
        let values = rows.iter().map(|r| {
            r.stats.as_ref().and_then(|s| {
                if name == "output_token_throughput_per_gpu" {
                    gpus.filter(|g| *g > 0)
                        .map(|g| s.output_token_throughput / f64::from(g))
                } else {
                    s.value(name)
                }
            })
        });
        columns.push(match field.data_type() {
            DataType::UInt64 => {
                let mut b = UInt64Builder::new();
                for v in values {
                    b.append_option(v.map(|v| v as u64));
                }
                Arc::new(b.finish())
            }
            _ => Arc::new(Float64Array::from_iter(values)),
        });
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A float column's values by row (`None` for nulls or a missing column).
pub fn float_column(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let Some(c) = batch.column_by_name(name) else {
        return vec![None; batch.num_rows()];
    };
    match c.data_type() {
        DataType::Float64 => c.as_primitive::<Float64Type>().iter().collect(),
        DataType::UInt64 => c
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|v| v as f64))
            .collect(),
        DataType::UInt32 => c
            .as_primitive::<UInt32Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        DataType::UInt16 => c
            .as_primitive::<UInt16Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        _ => vec![None; batch.num_rows()],
    }
}
