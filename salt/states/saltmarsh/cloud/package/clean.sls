{#- The package may serve more than saltmarsh: leave it installed. #}
saltmarsh-cloud-package-clean-test-nop:
  test.nop:
    - name: leaving the mosquitto package installed
