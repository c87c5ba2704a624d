# trellis server on Nomad: two replicas of the xDS control plane, each
# registered in Consul with a readiness check on the admin listener's
# /readyz. The settings file is rendered by a template; values from Consul
# KV (trellis/config/...) override the defaults shown here.
#
#   nomad job run deploy/nomad/trellis.nomad.hcl
job "trellis" {
  datacenters = ["dc1"]
  type        = "service"

  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "server" {
    count = 2

    # Never both replicas on one node.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "xds" {
        static = 18000
      }
      port "admin" {}
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    service {
      name     = "trellis-xds"
      port     = "xds"
      provider = "consul"
      tags     = ["xds"]

      check {
        name     = "trellis readiness"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {
      name     = "trellis-admin"
      port     = "admin"
      provider = "consul"
      tags     = ["metrics"]

      check {
        name     = "trellis liveness"
        type     = "http"
        port     = "admin"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "trellis" {
      driver = "docker"

      config {
        image = "ghcr.io/trellis-mesh/trellis:latest"
        args  = ["server", "--config", "${NOMAD_TASK_DIR}/trellis.yaml"]
        ports = ["xds", "admin"]
      }

      env {
        # The job registers the replicas in Consul itself (service blocks
        # above); the server's own registration is off.
        TRELLIS_REGISTER_SERVICE = ""
      }

      template {
        destination = "local/trellis.yaml"
        change_mode = "restart"
        data        = <<-EOT
          # Keys are the flag names of trellis server (trellis server --help).
          xds-listen: 0.0.0.0:{{ env "NOMAD_PORT_xds" }}
          admin-listen: 0.0.0.0:{{ env "NOMAD_PORT_admin" }}
          consul-addr: {{ env "attr.unique.network.ip-address" }}:8500
          log-format: json
          log-level: {{ keyOrDefault "trellis/config/log-level" "info" }}
          policy-prefix: {{ keyOrDefault "trellis/config/policy-prefix" "trellis/policies/" }}
          # Plaintext xDS on a non-loopback address: reachable clients can read
          # every service's configuration. Prefer xds-tls with SPIRE.
          xds-insecure: true
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
