#!/usr/bin/python3
"""Writes the fuzz seeds that testdata/ has no file for into tests/fuzz/corpus/
(run once; the output is kept in git). Needs Debian's python3-numpy.

weights: torch.save files written the way torch does (zip: data.pkl, data/N,
version; legacy: five pickles then raw storages) for a small state dict, and
the pickle part of ../shared/golden/weights/cpnet_nucleilike_s2_legacy.pth
with its storages cut short. flows: NAME_flows.npy arrays. size: a size
model file of ../shared/golden/size. json: SeeSpot
manifest, Neuroglancer state and OME-Zarr .zattrs of the shapes in
../shared/spec/seespot.md. zarr: .zarray JSON + one chunk per codec,
encoded by numcodecs (python3-numcodecs).""" 
import collections, io, json, os, pickle, pickletools, struct, sys, types, zipfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "..", "shared")


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- weights: stand-ins for torch's globals so pickle writes torch's names
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage


def _rebuild_tensor_v2(*a):
    pass


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class Storage:
    def __init__(self, key, arr):
        self.key, self.arr = key, arr


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, s = [], 1
        for n in reversed(self.shape):
            stride.insert(0, s)
            s *= n
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False,
                                     collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.arr.size)
        return None


def state():
    rng = np.random.default_rng(7)
    sd = collections.OrderedDict()
    storages = []
    for i, shape in enumerate([(2, 1, 3, 3), (2,), (1, 2, 1, 1), (3, 2)]):
        st = Storage(str(i), rng.standard_normal(int(np.prod(shape))).astype("<f4"))
        storages.append(st)
        sd["layer%d.weight" % i] = Tensor(st, shape)
    return sd, storages


def dumps(obj, proto=2):
    b = io.BytesIO()
    TorchPickler(b, protocol=proto).dump(obj)
    return b.getvalue()


def weights():
    sd, storages = state()
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        def put(name, data):  # fixed dates: the same bytes on every run
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
        put("archive/data.pkl", dumps(sd))
        put("archive/byteorder", "little")
        for s in storages:
            put("archive/data/" + s.key, s.arr.tobytes())
        put("archive/version", "3\n")
    out("weights", "small_zip.pth", b.getvalue())

    leg = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                               "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, leg, protocol=2)
    leg.write(dumps(sd))
    pickle.dump([s.key for s in storages], leg, protocol=2)
    for s in storages:
        leg.write(struct.pack("<q", s.arr.size) + s.arr.tobytes())
    out("weights", "small_legacy.pth", leg.getvalue())

    # the real file's pickles, storages cut after 64 bytes
    with open(os.path.join(SHARED, "golden/weights/cpnet_nucleilike_s2_legacy.pth"), "rb") as f:
        data = f.read()
    pos = 0
    for _ in range(5):
        for op, arg, p in pickletools.genops(io.BytesIO(data[pos:])):
            if op.name == "STOP":
                pos += p + 1
                break
    out("weights", "golden_legacy_cut.pth", data[:pos + 64])


def flows():
    def npy(a):
        b = io.BytesIO()
        np.save(b, a)
        return b.getvalue()

    yy, xx = np.mgrid[0:24, 0:32].astype(np.float32)
    f = np.zeros((3, 24, 32), np.float32)
    for cy, cx in ((8, 8), (14, 22)):
        d = np.hypot(yy - cy, xx - cx) + 1e-3
        inside = d < 6
        f[0][inside] = ((cy - yy) / d)[inside]
        f[1][inside] = ((cx - xx) / d)[inside]
        f[2][inside] = 3.0
    f[2][f[2] == 0] = -3.0
    out("flows", "two_cells.npy", npy(f))
    g = f.copy()
    g[0, 3, 4], g[1, 10, 10], g[2, 12, 12] = np.nan, np.inf, np.nan
    g[0, 8, 9] = 1e30
    out("flows", "nan_inf.npy", npy(g))
    out("flows", "empty.npy", npy(np.zeros((3, 0, 5), np.float32)))
    out("flows", "float64.npy", npy(f.astype(np.float64)))


def images():
    import gzip
    import tifffile
    rng = np.random.default_rng(5)
    a = (rng.random((2, 3, 20, 24)) * 4000).astype(np.uint16)  # Z C Y X
    b = io.BytesIO()
    np.save(b, a[0, 0])
    out("image", "u16.npy.gz", gzip.compress(b.getvalue(), mtime=0))
    for name, kw in (("tiled_deflate.tif", dict(tile=(16, 16), compression="zlib")),
                     ("bigtiff_planar.tif", dict(bigtiff=True, planarconfig="separate", photometric="minisblack")),
                     ("imagej_zcyx.tif", dict(imagej=True, metadata={"axes": "ZCYX"})),
                     ("ome_zcyx.ome.tif", dict(metadata={"axes": "ZCYX"})),
                     ("rgb_strips.tif", dict(photometric="rgb", rowsperstrip=3))):
        data = a[:, :, :, :] if "zcyx" in name else a[0]
        if name.startswith("rgb"):
            data = np.moveaxis(a[0], 0, -1).astype(np.uint8)
        b = io.BytesIO()
        tifffile.imwrite(b, data, **kw)
        out("image", name, b.getvalue())


def tables():
    # the dye ratio matrix spotquery ratios reads (whitespace or commas)
    out("table", "ratios.txt", b"1.0 0.12 0.03\n0.2, 1.0, 0.1\n0.0\t0.3\t1.0\n")


def sizes():
    # a size model Cellpose's train_size wrote (see ../shared/golden/size)
    with open(os.path.join(SHARED, "golden/size/models/cpnet_cyto3like_s1.pth_size.npy"), "rb") as f:
        out("size", "cyto3like_size.npy", f.read())


def jsons():
    out("json", "manifest.json", json.dumps({
        "round": "R2", "spot_channels": ["488", "561", 638],
        "gene_dict": {"488": {"gene": "Gad2"}, "561": {"name": "Sst"}, "638": "Vip"}}).encode())
    out("json", "neuroglancer.json", json.dumps({
        "dimensions": {"x": [1e-6, "m"], "y": [1e-6, "m"], "z": [1e-6, "m"]},
        "layers": [{"type": "image", "name": "488", "source": "zarr://s3://b/d/fused/channel_488.zarr"},
                   {"type": "annotation", "name": "spots", "annotations": []}]}).encode())
    out("json", "zattrs.json", json.dumps({"multiscales": [{"version": "0.4", "axes": [
        {"name": n, "type": "space" if n in "zyx" else "channel"} for n in "tczyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1.0, 0.748, 0.748]}]}]}]}).encode())


def zarrs():
    # fuzz_zarr's input: 2-byte length, JSON (.zarray and .zattrs), chunk 0
    import numcodecs
    B = numcodecs.Blosc

    def seed(name, dtype, shape, chunks, comp, sep=".", order="C", fill=0, extra=None):
        meta = {"zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype, "order": order,
                "fill_value": fill, "filters": None, "dimension_separator": sep,
                "compressor": comp.get_config() if comp else None}
        meta.update(extra or {})
        j = json.dumps(meta).encode()
        raw = (np.arange(int(np.prod(chunks))) % 251).astype(dtype).reshape(chunks, order=order).tobytes(order=order)
        out("zarr", name, struct.pack("<H", len(j)) + j + bytes(comp.encode(raw) if comp else raw))

    seed("raw_u16", "<u2", [3, 10, 12], [2, 8, 8], None)
    seed("zlib_i32", "<i4", [20, 20], [16, 16], numcodecs.Zlib(1))
    seed("gzip_f32", "<f4", [4, 5, 6], [4, 5, 6], numcodecs.GZip(1), sep="/")
    seed("zstd_u8", "|u1", [9, 9, 9], [4, 4, 4], numcodecs.Zstd(1), fill=3)
    seed("blosc_lz4", "<u2", [2, 30, 30], [1, 16, 16], B("lz4", 5, B.SHUFFLE))
    seed("blosc_zstd_bit", "<f8", [5, 7], [5, 7], B("zstd", 3, B.BITSHUFFLE), sep="/")
    seed("be_F", ">i2", [6, 5, 4], [3, 5, 4], None, order="F", fill=-1)
    seed("nan_fill", "<f4", [4, 4, 4], [2, 2, 2], numcodecs.Zlib(1), fill="NaN")
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    seed("ome", "<u2", [2, 3, 8, 8], [1, 3, 8, 8], numcodecs.Zlib(1), extra={"multiscales": [{
        "version": "0.4", "axes": axes, "datasets": [{"path": ".", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 2, .5, .5]}]}]}]})


weights()
flows()
images()
tables()
sizes()
jsons()
zarrs()
