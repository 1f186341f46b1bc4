"""`model.image_pos_embed`: a learned (row, col) embedding of image tokens. The row and column the model reads
from the rotary positions are the packer's patch index; a release made before the option existed loads and
samples as trained (no embedding); the embedding changes what an image token computes."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import TINY, tiny_model

from mmgen.config import ShapesConfig
from mmgen.data.packing import KIND_TEXT, Packer, PackSpec
from mmgen.data.shapes import ShapesGenerator
from mmgen.models.model import MMGenConfig, MMGenModel
from mmgen.sampling.pipeline import MMGenPipeline
from mmgen.train.checkpoint import export_release


def test_rotary_positions_give_the_packers_patch_index(text_tokenizer):
    packer = Packer(
        text_tokenizer, PackSpec.from_config(MMGenConfig(image_grid=(3, 4), image_size=32), rows=2, seq_len=128)
    )
    for doc in ShapesGenerator(ShapesConfig()).documents(0, 30):  # every layout, several images per document
        for enc in packer.encode(doc):
            img = enc.kind != KIND_TEXT
            row, col = enc.pos[1, img] - enc.pos[0, img], enc.pos[2, img] - enc.pos[0, img]
            assert (row * 4 + col == enc.patch[img]).all()
            assert row.max() == 2 and col.max() == 3


def _release(tiny_assets, tmp_path, name, **config):
    text, image, model = tiny_model(tiny_assets, **TINY, **config)
    return export_release(tmp_path / name, MMGenModel, model.config, model.state_dict(), text, image)


def test_release_without_the_key_loads_without_the_embedding_and_samples_as_trained(tiny_assets, tmp_path):
    release = _release(tiny_assets, tmp_path, "old", image_pos_embed=False)
    reference = MMGenPipeline.from_pretrained(release).text_to_image(["a large red circle"], steps=2, seed=0)
    cfg = json.loads((release / "config.json").read_text())
    del cfg["image_pos_embed"]
    (release / "config.json").write_text(json.dumps(cfg))
    old = MMGenPipeline.from_pretrained(release)
    assert old.model.image_pos is None and not old.model.config.image_pos_embed
    again = old.text_to_image(["a large red circle"], steps=2, seed=0)
    assert all((a == b).all() for a, b in zip(reference, again))


def test_the_embedding_round_trips_and_moves_the_image(tiny_assets, tmp_path):
    release = _release(tiny_assets, tmp_path, "new", image_pos_embed=True)
    pipe = MMGenPipeline.from_pretrained(release)
    assert pipe.model.image_pos.shape == (16, 32)
    with torch.no_grad():  # the image head starts at zero: give it weights so the output depends on the input
        torch.nn.init.normal_(pipe.model.image_out.weight, std=0.5)
        before = np.stack(pipe.text_to_image(["a large red circle"], steps=2, seed=0)).astype(int)
        pipe.model.image_pos.mul_(0)
        after = np.stack(pipe.text_to_image(["a large red circle"], steps=2, seed=0)).astype(int)
    assert np.abs(before - after).mean() > 0.5
