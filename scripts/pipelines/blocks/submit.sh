#!/bin/sh
# Submits the blockwise segmentation of one volume to Slurm: plans the blocks
# (here, on the submitting host: it only reads the volume's header), then an
# array of one task per block (blocks.sbatch) and a merge job that starts
# only if all of them succeed. Prints the merge job's id.
#   IN=vol.tif BLOCK_SIZE=64,512,512 [WORK=.. OUT=.. MODEL=.. ...] submit.sh [SBATCH_OPTION...]
# Extra arguments go to both sbatch calls (e.g. --partition=cpu --account=lab).
# The settings are blocks.sbatch's, from the environment.
set -eu
: "${IN:?set IN to the volume}"
here=$(cd "$(dirname "$0")" && pwd)
n=$(bash "$here/blocks.sbatch" plan)
case $n in ''|*[!0-9]*) echo "submit.sh: the plan gave no block count ($n)" >&2; exit 1 ;; esac
export NBLOCKS="$n"                 # lets a failed block be resubmitted alone
jid=$(sbatch --parsable --array=0-$((n - 1)) "$@" "$here/blocks.sbatch")
jid=${jid%%;*}                      # "id;cluster" on multi-cluster sites
mid=$(sbatch --parsable --dependency=afterok:"$jid" --job-name=cptools-merge "$@" "$here/blocks.sbatch" merge)
mid=${mid%%;*}
echo "submitted array $jid (blocks 0-$((n - 1))) and merge job $mid" >&2
echo "$mid"
