#!/usr/bin/env bash
# Worked examples of `ierf diagnose` (IERF Sec. VI-E, Fig. 12) with the offline ImageNet
# EfficientNet-Lite0, on a laptop CPU (about 8 minutes in all on one core):
#   1. a composite of two bundled photos (chelsea | coffee): why does the model pick one
#      class, where do the other class's routes look, which edge decides;
#   2. a targeted FGSM on chelsea (Egyptian cat → lynx): what the attack changed in the
#      concept graph; and a targeted PGD towards the paper's sea slug.
# The graph is deliberately small (10 photos, 16 concepts per layer): enough to run the
# commands, too small for the concepts to explain much (see the error-node lines).
# Usage: scripts/diagnose_examples.sh [OUT]   (default: diagnose-example)
set -euo pipefail
OUT=${1:-diagnose-example}
IERF=${IERF:-ierf}
mkdir -p "$OUT"

# a small concept graph of the bundled photos: blocks.4 → blocks.5 → classes
$IERF atlas build --model efficientnet_lite0 --images photos --layers blocks.4,blocks.5 \
    --samples-per-image 8 --batch-size 2 --ierf-downsample 4 --out "$OUT/atlas"
$IERF graph build "$OUT/atlas" --layers blocks.4,blocks.5 --n-concepts 16 --steps 8 \
    --batch-size 2 --out "$OUT/graph"

# the composite: chelsea on the left, coffee on the right
${PYTHON:-python} - "$OUT/chelsea+coffee.png" <<'EOF'
import sys

from PIL import Image

from ierf.data.images import load_image

left, right = (load_image(name).resize((224, 224)) for name in ("chelsea", "coffee"))
both = Image.new("RGB", (448, 224))
both.paste(left, (0, 0))
both.paste(right, (224, 0))
both.save(sys.argv[1])
EOF

# 1. two classes on one image: the prediction against the class of the other half
$IERF diagnose "$OUT/chelsea+coffee.png" --graph "$OUT/graph" --versus espresso --steps 8 \
    -o "$OUT/composite"

# 2. targeted FGSM on chelsea (2/255 reaches lynx; targeted FGSM misses far-away classes
#    such as sea slug at any eps, which the command reports), then PGD to sea slug
$IERF diagnose chelsea --graph "$OUT/graph" --attack fgsm --attack-target lynx --eps 0.0078 \
    --steps 8 -o "$OUT/fgsm"
$IERF diagnose chelsea --graph "$OUT/graph" --attack pgd --attack-target "sea slug" \
    --eps 0.0314 --steps 8 -o "$OUT/pgd"
