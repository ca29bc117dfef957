# Per-parameter optimizer settings of the official TransNeXt recipes (mmengine `custom_keys`:
# the first, i.e. longest, key that is a substring of a parameter's full name decides).

# Mask R-CNN and UperNet: no weight decay on position-bias / temperature parameters and norms.
transnext_no_decay_keys = {
    'query_embedding': dict(decay_mult=0.),
    'relative_pos_bias_local': dict(decay_mult=0.),
    'cpb': dict(decay_mult=0.),
    'temperature': dict(decay_mult=0.),
    'norm': dict(decay_mult=0.),
}

# DINO and Mask2Former: backbone at 0.1x lr, no decay on its biases, norms and position-bias /
# temperature parameters; used with bias_decay_mult=0, norm_decay_mult=0, flat_decay_mult=0.
# As in the official configs, the per-stage norm / patch-embed keys cover stages 1-3 only, so
# `backbone.norm4` and `backbone.patch_embed4` keep the base lr (and mmdet's / mmseg's own
# `'backbone': lr_mult 0.1` key must not be inherited: children set `_delete_=True`).
# Per-block norm keys are listed for the deepest variant (Base: 5, 5, 23, 5 blocks); keys of
# blocks a smaller variant lacks match nothing.
__nodecay = dict(lr_mult=0.1, decay_mult=0.)
__decay = dict(lr_mult=0.1)
transnext_backbone_keys = {
    'attn.query_embedding': __nodecay,
    'relative_pos_bias_local': __nodecay,
    'cpb': __nodecay,
    'temperature': __nodecay,
    'attn.learnable': __decay,
    'attn.q.weight': __decay,
    'attn.q.bias': __nodecay,
    'attn.kv.weight': __decay,
    'attn.kv.bias': __nodecay,
    'attn.qkv.weight': __decay,
    'attn.qkv.bias': __nodecay,
    'attn.sr.weight': __decay,
    'attn.sr.bias': __nodecay,
    'attn.norm': __nodecay,
    'attn.proj.weight': __decay,
    'attn.proj.bias': __nodecay,
    'mlp.fc1.weight': __decay,
    'mlp.fc2.weight': __decay,
    'mlp.fc1.bias': __nodecay,
    'mlp.fc2.bias': __nodecay,
    'mlp.dwconv.dwconv.weight': __decay,
    'mlp.dwconv.dwconv.bias': __nodecay,
}
transnext_backbone_keys.update({
    key.format(i): setting
    for i in range(1, 4)
    for key, setting in (('backbone.norm{}', __nodecay), ('backbone.patch_embed{}.norm', __nodecay),
                         ('backbone.patch_embed{}.proj.weight', __decay),
                         ('backbone.patch_embed{}.proj.bias', __nodecay))
})
transnext_backbone_keys.update({
    f'backbone.block{stage + 1}.{block}.norm': __nodecay
    for stage, depth in enumerate([5, 5, 23, 5])
    for block in range(depth)
})
