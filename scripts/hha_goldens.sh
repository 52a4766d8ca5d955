#!/usr/bin/env bash
# Regenerate tests/goldens/hha/scenes.npz: the reference HHA code (Gupta et al., MATLAB)
# run in GNU Octave on synthetic depth scenes (issue 17, item 4).
#
#   bash scripts/hha_goldens.sh
#
# The reference code, unmodified (plain MATLAB, no MEX files are used by saveHHA):
#   s-gupta/rcnn-depth  7a7baf7dcccc6fdf6be7c13d16828064d89dff4e  (rcnn/saveHHA.m, mcg/depth_features/processDepthImage.m)
#   s-gupta/rgbdutils   1530d271f0f797cc8e30b258a3d6d37fc64c51f4  (computeNormalsSquareSupport, getYDir, getRMatrix, ...)
# (rcnn-depth's README also clones s-gupta/utils and s-gupta/nyu-hooks into it; saveHHA
# needs neither when given the depth maps and the camera matrix, which the scenes are.)
# Git directories: $HHA_GIT_ROOT/<owner>+<name>/repo (default /work/.mirror, the offline
# `fetch` snapshots), else cloned from GitHub. Extracted into $FCNSEG_HHA_CACHE
# (default ~/.cache/fcnseg-hha).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FCNSEG_HHA_CACHE:-$HOME/.cache/fcnseg-hha}
ROOT=${HHA_GIT_ROOT:-/work/.mirror}

for p in octave octave-image python3-numpy; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends octave octave-image python3-numpy; break; }
done

extract() {  # name commit
    local name=$1 commit=$2 dest=$CACHE/$1
    [ -d "$dest" ] && return
    local gitdir=$ROOT/s-gupta+$name/repo
    [ -d "$gitdir/.git" ] && gitdir=$gitdir/.git
    if ! git --git-dir="$gitdir" cat-file -e "$commit^{commit}" 2>/dev/null; then
        gitdir=$CACHE/$name.git
        [ -d "$gitdir" ] || git clone --bare "https://github.com/s-gupta/$name" "$gitdir"
    fi
    mkdir -p "$dest.tmp"
    git --git-dir="$gitdir" archive "$commit" | tar -x -C "$dest.tmp"
    mv "$dest.tmp" "$dest"
}
mkdir -p "$CACHE"
extract rcnn-depth 7a7baf7dcccc6fdf6be7c13d16828064d89dff4e
extract rgbdutils 1530d271f0f797cc8e30b258a3d6d37fc64c51f4

/usr/bin/python3 "$REPO/scripts/hha_goldens.py" --reference "$CACHE" --out "$REPO/tests/goldens/hha"
