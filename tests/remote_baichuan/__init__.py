"""Tiny faithful re-creations of Baichuan's remote modelling code (not downloadable in the tests).

The module layout, the parameter names and the way the attention splits W_pack follow the hub's
``modeling_baichuan.py`` of Baichuan-7B (``BaiChuanForCausalLM``: RoPE) and Baichuan-13B
(``BaichuanForCausalLM``: an ALiBi mask ``[n_head, L, L]`` built once by the model from
``num_attention_heads`` and passed to every layer as ``attention_mask``). The files are self-contained
so that they can be copied into a model folder and loaded with ``trust_remote_code=True``.
"""
