{#- Every role: the saltmarsh user, the project in a venv, config and state directories, journald. #}
include:
  - .package
  - .config
