// Writes the Parquet fixtures of testdata/spots from merged.csv with two
// independent writers: parquet-wasm (arrow-rs; data pages v1 or v2, codecs
// none/snappy/gzip/zstd) and hyparquet-writer (data pages v2; snappy, and
// gzip through node's zlib). Run in a folder where
//   npm install parquet-wasm apache-arrow hyparquet-writer
// was done:  NODE_PATH=<that>/node_modules node make_parquet.mjs
// Each file holds the rows of merged.csv (the CSV twin).
import fs from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { createRequire } from 'node:module'

const require = createRequire(process.env.NODE_PATH + '/')
const arrow = require('apache-arrow')
const pw = require('parquet-wasm')
const { parquetWriteBuffer } = await import(process.env.NODE_PATH + '/hyparquet-writer/src/index.js')

const here = path.dirname(new URL(import.meta.url).pathname)
function readCsv(file) {
  const lines = fs.readFileSync(path.join(here, file), 'utf8').trim().split('\n')
  return [lines[0].split(','), lines.slice(1).map(l => l.split(','))]
}

function kind(n) {
  if (['chan', 'unmixed_chan'].includes(n)) return 'str'
  if (['spot_id', 'chan_spot_id'].includes(n)) return 'i32'
  if (n === 'cell_id') return 'i16'
  if (n === 'round') return 'i8'
  if (['over_thresh', 'valid_spot', 'unmixed_removed', 'reassigned'].includes(n)) return 'bool'
  if (n.endsWith('_fg') || n.endsWith('_bg') || n === 'dye_line_dist_ratio') return 'f64'
  return 'f32'
}
function columns(file) {
  const [names, rows] = readCsv(file)
  return names.map((n, j) => {
    const k = kind(n)
    const vals = rows.map(r => {
      const s = r[j]
      if (s === '') return null
      if (k === 'str') return s
      if (k === 'bool') return s === 'True'
      return Number(s)
    })
    return { name: n, k, vals }
  })
}
let cols = columns('merged.csv')

// ---- parquet-wasm (arrow-rs) ----
function arrowTable() {
  const data = {}
  for (const c of cols) {
    const t = { str: new arrow.Utf8(), i32: new arrow.Int32(), i16: new arrow.Int16(), i8: new arrow.Int8(),
      bool: new arrow.Bool(), f64: new arrow.Float64(), f32: new arrow.Float32() }[c.k]
    data[c.name] = arrow.vectorFromArray(c.vals, t)
  }
  return new arrow.Table(data)
}
const ipc = arrow.tableToIPC(arrowTable(), 'stream')
function pwWrite(file, codec, version, dict, groupRows) {
  const props = new pw.WriterPropertiesBuilder()
    .setCompression(codec)
    .setWriterVersion(version)
    .setDictionaryEnabled(dict)
    .setMaxRowGroupSize(groupRows)
    .build()
  const buf = pw.writeParquet(pw.Table.fromIPCStream(ipc), props)
  fs.writeFileSync(path.join(here, file), buf)
}
const C = pw.Compression, V = pw.WriterVersion
pwWrite('pw_none.parquet', C.UNCOMPRESSED, V.V1, true, 7)
pwWrite('pw_snappy.parquet', C.SNAPPY, V.V1, true, 10)
pwWrite('pw_gzip.parquet', C.GZIP, V.V1, true, 100)
pwWrite('pw_zstd.parquet', C.ZSTD, V.V1, true, 9)
pwWrite('pw_zstd_v2.parquet', C.ZSTD, V.V2, true, 11)
pwWrite('pw_plain.parquet', C.SNAPPY, V.V1, false, 100)

// ---- hyparquet-writer ----
function hpWrite(file, codec, groupRows, cols) {
  const columnData = cols.map(c => {
    const type = { str: 'STRING', i32: 'INT32', i16: 'INT32', i8: 'INT32', bool: 'BOOLEAN', f64: 'DOUBLE',
      f32: 'FLOAT' }[c.k]
    return { name: c.name, data: c.vals, type, nullable: true }
  })
  const buf = parquetWriteBuffer({
    columnData, codec, rowGroupSize: groupRows,
    compressors: { GZIP: b => new Uint8Array(zlib.gzipSync(b)) },
  })
  fs.writeFileSync(path.join(here, file), new Uint8Array(buf))
}
hpWrite('hp_snappy.parquet', 'SNAPPY', 8, cols)
hpWrite('hp_gzip.parquet', 'GZIP', 100, cols)
hpWrite('hp_none.parquet', 'UNCOMPRESSED', 5, cols)
// a dataset folder of Parquet tables, twin of csv_dataset/
fs.mkdirSync(path.join(here, 'pq_dataset'), { recursive: true })
for (const t of ['mixed_spots_R2', 'unmixed_spots_R2_minDist_3'])
  hpWrite(`pq_dataset/${t}.parquet`, 'SNAPPY', 10, columns(`csv_dataset/${t}.csv`))
