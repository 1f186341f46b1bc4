#!/bin/bash
# the end-to-end run of data/README.md, one thread, at low priority
set -e
cd /work/main
export OMP_NUM_THREADS=1
PY=.venv/bin/python
E=/tmp/e2e19
/usr/bin/time -f "write %e s" $PY -c "from mmgen.data.sources import flickr8k; from mmgen.data.img2dataset import write_img2dataset as w
for s in ('train', 'test'): print(s, w(flickr8k(s), f'$E/flickr8k-i2d-{s}'))"
/usr/bin/time -f "cache %e s" $PY scripts/cache_latents.py --source img2dataset:$E/flickr8k-i2d-train --layout both \
    --tokenizer tokenizers/image/cifar_kl.yaml --image-size 32 --out $E/flickr8k-latents
/usr/bin/time -f "train %e s" $PY scripts/train.py --config configs/train/flickr8k.yaml data.source=shards \
    data.shards=$E/flickr8k-latents data.latents=true data.rows=4 train.steps=300 train.warmup_steps=30 \
    objective.imm.warm_start_steps=150 train.sample_every=0 train.ckpt_every=0 train.output_dir=$E/run
$PY scripts/prepare_data.py --source img2dataset:$E/flickr8k-i2d-test --layout image_caption --out $E/flickr8k-test
$PY scripts/eval_text.py --model $E/run/release --shards $E/flickr8k-test --out $E/eval_text.json
$PY scripts/eval_text.py --model $E/run/release --shards $E/flickr8k-test --drop-images --out $E/eval_text_noimages.json
$PY scripts/eval_text.py --model $E/run/release --shards $E/flickr8k-test --shuffle-images --out $E/eval_text_shuffled.json
echo DONE
