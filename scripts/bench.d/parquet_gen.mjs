// Writes a synthetic merged SeeSpot table as snappy Parquet (what SeeSpot
// caches as <dataset>.parquet) for scripts/bench.d/parquet.sh:
//   NODE_PATH=<dir with parquet-wasm and apache-arrow>/node_modules node parquet_gen.mjs N OUT
// Full width (3 channels, 28 columns), row groups of 1M rows, dictionary
// strings, nulls in the unmixed columns. Seeded: same file every run.
import fs from 'node:fs'
import { createRequire } from 'node:module'
const require = createRequire(process.env.NODE_PATH + '/')
const arrow = require('apache-arrow')
const pw = require('parquet-wasm')

const n = Number(process.argv[2] || 8000000), out = process.argv[3]
let s = 12345
const rnd = () => { // xorshift32
  s ^= s << 13; s ^= s >>> 17; s ^= s << 5; s >>>= 0
  return s / 4294967296
}
const CH = ['488', '514', '561']
const f32 = (lo, hi) => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rnd(); return a }
const chan = new Array(n), uchan = new Array(n)
const csi = new Int32Array(n), sid = new Int32Array(n), cell = new Int32Array(n), round = new Int8Array(n)
const valid = new Array(n), removed = new Array(n), reassigned = new Array(n), over = new Array(n)
const cnt = [0, 0, 0]
for (let i = 0; i < n; i++) {
  const c = Math.floor(i * 3 / n)
  chan[i] = CH[c]; csi[i] = ++cnt[c]; sid[i] = i + 1; cell[i] = Math.floor(rnd() * 100000); round[i] = 1
  const u = rnd()
  if (u < 0.05) { uchan[i] = null; valid[i] = null; removed[i] = true; reassigned[i] = false }
  else {
    uchan[i] = u < 0.07 ? 'none' : CH[Math.floor(rnd() * 3)]
    valid[i] = rnd() < 0.6; removed[i] = uchan[i] === 'none'; reassigned[i] = !removed[i] && uchan[i] !== chan[i]
  }
  over[i] = rnd() < 0.7
}
const cols = {
  spot_id: arrow.makeVector(sid), chan: arrow.vectorFromArray(chan, new arrow.Dictionary(new arrow.Utf8(), new arrow.Int32())),
  chan_spot_id: arrow.makeVector(csi), cell_id: arrow.makeVector(cell), round: arrow.makeVector(round),
}
for (const k of ['z', 'y', 'x', 'z_center', 'y_center', 'x_center']) cols[k] = arrow.makeVector(f32(0, 2000))
cols.dist = arrow.makeVector(f32(0, 2)); cols.r = arrow.makeVector(f32(0, 1))
for (const c of CH) { cols[`chan_${c}_fg`] = arrow.makeVector(f32(100, 900)); cols[`chan_${c}_bg`] = arrow.makeVector(f32(50, 100)) }
for (const c of CH) cols[`chan_${c}_intensity`] = arrow.makeVector(f32(0, 800))
cols.over_thresh = arrow.vectorFromArray(over, new arrow.Bool())
cols.unmixed_chan = arrow.vectorFromArray(uchan, new arrow.Dictionary(new arrow.Utf8(), new arrow.Int32()))
cols.valid_spot = arrow.vectorFromArray(valid, new arrow.Bool())
cols.dye_line_dist_ratio = arrow.makeVector(f32(0, 9))
cols.unmixed_removed = arrow.vectorFromArray(removed, new arrow.Bool())
cols.reassigned = arrow.vectorFromArray(reassigned, new arrow.Bool())
const table = new arrow.Table(cols)
const props = new pw.WriterPropertiesBuilder().setCompression(pw.Compression.SNAPPY).setMaxRowGroupSize(1 << 20).build()
fs.writeFileSync(out, pw.writeParquet(pw.Table.fromIPCStream(arrow.tableToIPC(table, 'stream')), props))
