"""Images to model inputs: decode, convert and resize once; normalise on the host or the
device. Its modules export: :mod:`~cxrdask.imaging.preprocessing` ``Preprocessing``;
:mod:`~cxrdask.imaging.decode` ``decode_gray``, ``resize_gray``; :mod:`~cxrdask.imaging.dicom`
DICOM's pixels; :mod:`~cxrdask.imaging.host_input`, :mod:`~cxrdask.imaging.model_input` the
batch on the host or the device; :mod:`~cxrdask.imaging.jpeg_device` JPEGs decoded by a GPU."""
