"""A synthetic chest CT in Hounsfield units with exact lung and lesion labels.

The phantom is the unit tests' main fixture, the demo's default input and a source of
labelled training slices, so it tries to look like a real chest CT: body with fat and
muscle, ribs, spine, scapulae, sternum, mediastinum (heart, aorta, pulmonary artery, SVC,
oesophagus), trachea and main bronchi, two lungs shaped by the apex and the diaphragm domes
with a branching vessel tree, organs under the domes (liver, stomach with gas, spleen) and,
on request, COVID-like lesions (peripheral ground-glass opacities with consolidated cores)
and a dependent pleural effusion. Everything is vectorised numpy/scipy.

Geometry: the volume is in covidct's canonical orientation (array (z, y, x); x = patient
right -> left, y = anterior -> posterior, z = inferior -> superior), centred on the origin in
x and y. Anatomy is laid out in millimetres and scaled to fit the field of view; the lungs
span the ``shape[0]`` central slices (apex at the top, diaphragm domes at the bottom) and
``margin_slices`` extra slices are added below (upper abdomen) and above (shoulders/neck).

Label conventions (covidct.labels): lungs 1 = LEFT, 2 = RIGHT; lesions 1 = GGO,
2 = consolidation, 3 = pleural effusion. GGO/consolidation voxels are part of the lung
label; effusion voxels are not (the fluid takes pleural space, the lung is compressed).
Vessels crossing a GGO patch keep their blood density and are left out of the GGO label
(consolidation hides vessels, so its label has no such holes).

The package, by concern: ``geometry`` (coordinate grid, shapes, smooth random fields),
``anatomy`` (tissue densities, normal chest, lung labels), ``vessels`` (lung vessel trees),
``lesions`` (:class:`LesionSpec` and lesion/effusion placement), ``build`` (:class:`Phantom`,
:func:`make_phantom`, scanner noise, truth figures) and ``writers`` (:func:`write_phantom`).
"""

from covidct.phantom.build import Phantom, make_phantom, truth_from_labels
from covidct.phantom.lesions import LesionSpec
from covidct.phantom.writers import write_phantom

__all__ = ["LesionSpec", "Phantom", "make_phantom", "truth_from_labels", "write_phantom"]
