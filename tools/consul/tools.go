//go:build tools

// Package tools pins the Consul release that tests and the demo run.
package tools

import _ "github.com/hashicorp/consul"
