#!/usr/bin/python3
"""Writes the pandas pickle fixtures of testdata/spots and their CSV twins.

Run with Debian's python3-pandas (1.5.3): /usr/bin/python3 make_fixtures.py
The tests read the committed files; they never need pandas. Seeded: the same
bytes every run (for one pandas/numpy version)."""
import os
import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(7)
CH = ["488", "514", "561"]


def mixed(n):
    chan = np.array([CH[i * len(CH) // n] for i in range(n)], dtype=object)
    csi = np.zeros(n, dtype=np.int64)
    for c in CH:
        m = chan == c
        csi[m] = np.arange(1, m.sum() + 1)
    d = {
        "spot_id": csi.copy(),
        "chan": chan,
        "chan_spot_id": csi,
        "cell_id": rng.integers(0, 9, n),
        "round": np.array(["2"] * n, dtype=object),
    }
    for k in ["z", "y", "x", "z_center", "y_center", "x_center"]:
        d[k] = np.round(rng.uniform(0, 200, n), 3)
    d["dist"] = np.round(rng.uniform(0, 2, n), 4)
    d["r"] = np.round(rng.uniform(0, 1, n), 4)
    for c in CH:
        d[f"chan_{c}_fg"] = np.round(rng.uniform(100, 900, n), 2)
        d[f"chan_{c}_bg"] = np.round(rng.uniform(50, 100, n), 2)
    for c in CH:
        d[f"chan_{c}_intensity"] = d[f"chan_{c}_fg"] - d[f"chan_{c}_bg"]
    d["over_thresh"] = rng.uniform(0, 1, n) > 0.3
    df = pd.DataFrame(d)
    df.loc[3, "dist"] = np.nan          # a null float
    df.loc[5, "x_center"] = np.nan
    return df


def unmixed(m):
    u = m.copy()
    uc = np.array([CH[i] for i in rng.integers(0, 3, len(u))], dtype=object)
    uc[1] = None                        # removed: null
    uc[4] = "none"                      # removed: 'none'
    uc[7] = np.nan                      # removed: NaN in an object column
    u["unmixed_chan"] = uc
    u["valid_spot"] = rng.uniform(0, 1, len(u)) > 0.4
    u["dye_line_dist_ratio"] = np.round(rng.uniform(0, 9, len(u)), 3)
    u = u.drop(index=[2, 9]).reset_index(drop=True)   # spots removed by de-dup
    return u


def write(df, name, protocol=5):
    df.to_pickle(os.path.join(HERE, name + ".pkl"), protocol=protocol)
    df.to_csv(os.path.join(HERE, name + ".csv"), index=False)


def main():
    m = mixed(24)
    u = unmixed(m)
    ds = os.path.join(HERE, "pkl_dataset")
    os.makedirs(ds, exist_ok=True)
    m.to_pickle(os.path.join(ds, "mixed_spots_R2.pkl"))
    u.to_pickle(os.path.join(ds, "unmixed_spots_R2_minDist_3.pkl"))
    csvds = os.path.join(HERE, "csv_dataset")
    os.makedirs(csvds, exist_ok=True)
    m.to_csv(os.path.join(csvds, "mixed_spots_R2.csv"), index=False)
    u.to_csv(os.path.join(csvds, "unmixed_spots_R2_minDist_3.csv"), index=False)
    # protocol 2 and 4 (in-band arrays, no PickleBuffer), compact dtypes
    c = u.copy()
    c["chan_spot_id"] = c["chan_spot_id"].astype(np.int32)
    c["cell_id"] = c["cell_id"].astype(np.int16)
    c["z"] = c["z"].astype(np.float32)
    c["dist"] = c["dist"].astype(np.float32)
    c["spot_id"] = c["spot_id"].astype(np.uint8)
    write(c, "compact_p2", protocol=2)
    write(c, "compact_p4", protocol=4)
    # a frame with unconsolidated blocks (mgr_locs as arrays, several float blocks)
    parts = [u[["chan", "z"]], u[["unmixed_chan", "valid_spot"]], u[["y", "x", "r"]], u[["chan_spot_id"]]]
    f = pd.concat(parts, axis=1)
    f.insert(1, "dist", u["dist"])
    write(f, "blocks")
    # a non-default row index (dropped: spot tables are read without index)
    g = u.iloc[::2].copy()
    write(g, "sliced")


if __name__ == "__main__":
    main()
