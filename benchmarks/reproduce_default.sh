#!/usr/bin/env bash
# Reproduce the packaged default weights (usb_prep/weights/default) from ../shared/data, given the time:
# about 10 hours on 2 CPU cores (each stage stops at its config's wall-clock budget, so iteration counts
# and the exact weights depend on the machine). Paths are the configs' (/work/cache, /work/runs).
# usage: bash benchmarks/reproduce_default.sh [OUT_WEIGHTS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-usb_prep/weights/default}"
python -m benchmarks prepare --out /work/cache/brains           # ~9 min: 7 healthy brains + 1 patient
usb-train --config benchmarks/configs/train_fill.json                         # fill, stage 1  -> /work/runs/fill
usb-train --config benchmarks/configs/train_fill_stage2.json                  # fill, stage 2  -> /work/runs/fill2
usb-train --config benchmarks/configs/train_gen.json                          # generation     -> /work/runs/gen
usb-train --config benchmarks/configs/train_gen_stage2.json                   # generation, 2  -> /work/runs/gen2
python -m benchmarks bundle "$out"                                     # fill2 + gen2, packaged defaults
# the fill's refiner (~65 min): synthetic cases filled by the bundled fill, the refiner trained beside them
usb-train --config benchmarks/configs/train_refiner.json --fill-weights "$out"  # -> /work/runs/refiner/refine.pt
python -m benchmarks bundle "$out" --fill "$out" --generate "$out" --refiner /work/runs/refiner/refine.pt \
    --contrast t2w="$out" --contrast flair="$out" --contrast-set '{"t2w": {"refine": true}, "flair": {"refine": true}}'
# the T2w/FLAIR refiner (~55 min): the packaged T1w refiner ("init") fine-tuned on T2w/FLAIR cases of this fill
usb-train --config benchmarks/configs/train_refiner_t2.json --fill-weights "$out"  # -> /work/runs/refiner_t2/refine.pt
python -m benchmarks bundle "$out" --fill "$out" --generate "$out" \
    --contrast-refiner t2w=/work/runs/refiner_t2/refine.pt --contrast-refiner flair=/work/runs/refiner_t2/refine.pt
# the shipped T1w refiner (~2.5 h): the one above ("init" packaged) fine-tuned with the case-relative loss on cases of
# which every third holds a training mask of 120-450 ml; refiner_xl's run makes the first 73 of them
usb-train --config benchmarks/configs/train_refiner_xl.json --fill-weights "$out"   # -> /work/runs/refiner_xl (its cases)
mkdir -p /work/runs/refiner_rel/cases && cp -l /work/runs/refiner_xl/cases/*.npz /work/runs/refiner_rel/cases/
usb-train --config benchmarks/configs/train_refiner_rel.json --fill-weights "$out"  # -> /work/runs/refiner_rel/refine.pt
python -m benchmarks bundle "$out" --fill "$out" --generate "$out" --refiner /work/runs/refiner_rel/refine.pt
echo "weights in $out; evaluate with: python -m benchmarks validate --weights $out && python -m benchmarks run --weights $out --steps 1 --threads 2"
