"""The bank's businesses as data: which ones the counter offers, and the script each one follows.

A leaf package (standard library and PyYAML only): :mod:`business.catalogue`
lists the business types and their names, :mod:`business.loader` reads and
checks the flow files (``flows/*.yaml``) into a :class:`business.flow.Flow` of
typed steps (:mod:`business.steps`), and :mod:`business.core_banking` is the
interface through which a completed flow books its outcome. The server
(``server/flow_service.py``) runs the flows during calls; a flow file can be
checked and tested with this package alone.
"""
