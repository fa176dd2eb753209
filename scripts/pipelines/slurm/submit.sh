#!/bin/sh
# Submits the cptools analysis of a folder to Slurm: an array of NSHARDS tasks
# (pipeline.sbatch) and a merge job that starts only if all of them succeed.
#   IN=images OUT=results MODEL=cyto3 DIAMETER=25 submit.sh NSHARDS [SBATCH_OPTION...]
# Extra arguments go to both sbatch calls (e.g. --partition=cpu --account=lab).
set -eu
[ $# -ge 1 ] || { echo "usage: IN=DIR [OUT=DIR ...] $0 NSHARDS [SBATCH_OPTION...]" >&2; exit 2; }
: "${IN:?set IN to the folder of images}"
n=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
export NSHARDS=$n                   # lets a failed task be resubmitted alone
jid=$(sbatch --parsable --array=0-$((n - 1)) "$@" "$here/pipeline.sbatch")
jid=${jid%%;*}                      # "id;cluster" on multi-cluster sites
mid=$(sbatch --parsable --dependency=afterok:"$jid" --job-name=cptools-merge \
    --cpus-per-task=1 "$@" "$here/pipeline.sbatch" merge)
echo "submitted array $jid (tasks 0-$((n - 1))) and merge job $mid" >&2
