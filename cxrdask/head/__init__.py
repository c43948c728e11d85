"""The diagnosis head. Its modules export: :mod:`~cxrdask.head.train` ``train_head``,
``grid_search``, ``TrainResult``; :mod:`~cxrdask.head.batches` ``FeatureBatches`` (the lazy,
shuffled chunk reader), ``open_store``; :mod:`~cxrdask.head.resident` a split kept in memory;
:mod:`~cxrdask.head.model` ``DiagnosisHead``, ``Checkpoint``, ``load_checkpoint``;
:mod:`~cxrdask.head.encoding` the demographic inputs; :mod:`~cxrdask.head.loss`,
:mod:`~cxrdask.head.train_step` one step."""
