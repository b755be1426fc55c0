//! Parquet files of the metric tables.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::Error;
use crate::schema::{META_SCHEMA, META_VERSION};

/// `batch` as a parquet file (snappy). The schema (with every field's unit and formula) is
/// embedded, and its name and version (`harness.schema`, `harness.schema_version`) are
/// plain key-value metadata of the file too, for readers that ignore Arrow's embedded schema.
///
/// # Errors
/// [`Error::Parquet`] when encoding fails.
pub fn to_parquet(batch: &RecordBatch) -> Result<Bytes, Error> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("harness {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    for key in [META_SCHEMA, META_VERSION] {
        if let Some(v) = batch.schema().metadata().get(key) {
            writer.append_key_value_metadata(KeyValue::new(key.to_owned(), v.clone()));
        }
    }
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(buf))
}

/// Reads a parquet file written by [`to_parquet`] into one batch, with the schema's name and
/// version back in its metadata.
///
/// # Errors
/// [`Error::Parquet`] when the bytes are not a readable parquet file.
pub fn from_parquet(data: Bytes) -> Result<RecordBatch, Error> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)?;
    let mut meta = builder.schema().metadata().clone();
    if let Some(kv) = builder.metadata().file_metadata().key_value_metadata() {
        for e in kv {
            if (e.key == META_SCHEMA || e.key == META_VERSION)
                && let Some(v) = &e.value
            {
                meta.insert(e.key.clone(), v.clone());
            }
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(
        builder.schema().fields().clone(),
        meta,
    ));
    let reader = builder.build()?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let batch = match batches.as_slice() {
        [] => RecordBatch::new_empty(schema.clone()),
        [one] => one.clone(),
        many => arrow_select::concat::concat_batches(&many[0].schema(), many)?,
    };
    Ok(batch.with_schema(schema)?)
}
