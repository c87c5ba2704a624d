package xdsserver

import (
	"github.com/trellis-mesh/trellis/xdsserver/xdscache"
)

// CacheVersions is the ContentVersioner of a single cache, serving every
// profile.
type CacheVersions struct {
	Cache *xdscache.Cache
}

var (
	_ ContentVersioner = CacheVersions{}
	_ ContentVersioner = (*ProfileCaches)(nil)
)

// ContentVersions implements ContentVersioner.
func (c CacheVersions) ContentVersions(_, typeURL string, names []string) map[string]string {
	return contentVersions(c.Cache, typeURL, names)
}

// ContentVersions implements ContentVersioner: the versions in the cache of
// the profile, or of the fallback profile when that one is not served (as
// ProfileOf picks it).
func (p *ProfileCaches) ContentVersions(profile, typeURL string, names []string) map[string]string {
	c := p.caches[profile]
	if c == nil {
		c = p.caches[p.profiles[0].Name]
	}
	return contentVersions(c, typeURL, names)
}

func contentVersions(c *xdscache.Cache, typeURL string, names []string) map[string]string {
	out := make(map[string]string, len(names))
	if c == nil {
		return out
	}
	for _, name := range names {
		if _, v, ok := c.Resource(typeURL, name); ok {
			out[name] = v
		}
	}
	return out
}
