"""odeplug's engines for third-party frameworks, one plugin per subpackage.

Each is registered under the entry-point group ``odeplug.backends`` and imports its
framework only when used. Every subpackage has the same floor plan: ``solve.py`` (odeint
over the shared solver vocabulary), ``nn.py`` (layers, canonical parameter names),
``models.py`` (the model programs) and ``__init__.py`` (the Backend).
"""
