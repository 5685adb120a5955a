"""What operators use: the commands behind ``relay status``, ``dead``, ``requeue``, ``replay``,
``pause``, ``purge``, ``audit`` and ``inbox`` (``admin``, their answers in ``reports``, their
SQL in ``queries``), ``relay check`` (``check``), and the health and metrics endpoint
(``http``)."""
