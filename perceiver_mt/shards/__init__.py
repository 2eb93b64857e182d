"""Tar shards (WebDataset) of any registered task: the record codec, the reader streams and the writer CLI.

    python -m perceiver_mt.shards write --task digits --out /data/digits --shard-size 1000
    python -m perceiver_mt.shards inspect /data/digits/train-000000.tar
"""
