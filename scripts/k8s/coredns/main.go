// The cluster DNS of scripts/k8s-check: CoreDNS with the plugins its
// Corefile (scripts/k8s/addons.yaml) names, and no others, so that it builds
// from the Go module proxy in a couple of minutes.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which plugins handle a query, as in CoreDNS's plugin.cfg.
func init() {
	dnsserver.Directives = []string{"ready", "health", "errors", "cache", "kubernetes", "loop", "forward"}
}

func main() { coremain.Run() }
