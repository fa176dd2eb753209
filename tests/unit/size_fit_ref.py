#!/usr/bin/python3
"""Independent reference for tests/unit/test_size_train.c: Cellpose 3's
train_size regression (v3.1.1.3) on the styles and targets the test wrote,
with numpy, the products in float64 and np.linalg.solve.

    size_fit_ref.py STYLES.npy Y.npy L2 OUT_DIR

Writes OUT_DIR/A.npy (float64), smean.npy (float32), ymean.npy (float32,
shape ()) and corr.npy (float64: np.corrcoef of the centred targets and
A @ X, Cellpose's train correlation)."""
import sys

import numpy as np

styles = np.load(sys.argv[1])
y = np.load(sys.argv[2])
l2 = float(sys.argv[3])
out = sys.argv[4]
assert styles.dtype == np.float32 and y.dtype == np.float32
smean = styles.mean(axis=0)             # float32, as Cellpose
X = (styles - smean).T                  # float32
ymean = y.mean()                        # float32
yc = y - ymean                          # float32
Xd = X.astype(np.float64)
A = np.linalg.solve(Xd @ Xd.T + l2 * np.eye(X.shape[0]), Xd @ yc.astype(np.float64))
corr = np.corrcoef(yc.astype(np.float64), A @ Xd)[0, 1]
np.save(out + "/A.npy", A)
np.save(out + "/smean.npy", smean)
np.save(out + "/ymean.npy", np.array(ymean, np.float32))
np.save(out + "/corr.npy", np.array(corr))
