{#- The master keeps running without saltmarsh's engine and reactor once its config is gone. #}
saltmarsh-master-service-clean-test-nop:
  test.nop:
    - name: restart salt-master to drop saltmarsh's engine and reactor
