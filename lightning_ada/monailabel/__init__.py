"""lightning_ada behind MONAI Label (``pip install -e .[label]``): an app whose next sample is a
lightning_ada strategy's choice, whose inference is the current model's prediction and whose
training is ``lightning-ada fit`` (``app.py``, ``tasks.py``), over a datastore of 4-D NIfTIs
(``prepare.py``) whose labels are checked at upload (``datastore.py``). Start it with
``python -m lightning_ada.monailabel`` (``__main__.py``)."""
