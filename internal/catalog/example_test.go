package catalog_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Example runs a Watcher against the Consul agent that CONSUL_HTTP_ADDR
// names (default 127.0.0.1:8500) and prints the services of every snapshot.
func Example() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		fmt.Println(err)
		return
	}
	w, err := catalog.New(catalog.Config{
		Client: client,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "catalog"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(ctx) })
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case snap := <-w.Snapshots():
				fmt.Println(snap.ServiceNames(), w.Status().Reachable)
			}
		}
	})
	if err := g.Wait(); err != nil {
		fmt.Println(err)
	}
}
