package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// The plots of BENCHMARKS.md are small SVG line charts drawn here, with
// no plotting library: a frame, ticks, one polyline per series, a legend.

// series is one line of a chart.
type series struct {
	name   string
	points [][2]float64 // x, y in data units
}

// chart describes a line chart. With logX or logY the axis is log10.
type chart struct {
	title, xLabel, yLabel string
	logX, logY            bool
	// xTicks, when set, label these x values instead of computed ticks.
	xTicks map[float64]string
	series []series
}

// palette has one color per series, distinguishable in print.
var palette = []string{"#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"}

const (
	svgW, svgH                           = 720, 400
	padLeft, padRight, padTop, padBottom = 80, 200, 40, 60
)

func (c chart) svg() string {
	tx := func(v float64) float64 { return v }
	ty := tx
	if c.logX {
		tx = math.Log10
	}
	if c.logY {
		ty = math.Log10
	}
	minX, maxX, minY, maxY := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.series {
		for _, p := range s.points {
			if (c.logX && p[0] <= 0) || (c.logY && p[1] <= 0) {
				continue
			}
			minX, maxX = math.Min(minX, tx(p[0])), math.Max(maxX, tx(p[0]))
			minY, maxY = math.Min(minY, ty(p[1])), math.Max(maxY, ty(p[1]))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", padLeft, esc(c.title))
	if math.IsInf(minX, 0) {
		fmt.Fprintf(&b, `<text x="%d" y="%d">no data</text></svg>`+"\n", padLeft, svgH/2)
		return b.String()
	}
	if !c.logY && minY > 0 {
		minY = 0
	}
	if maxX == minX {
		maxX, minX = maxX+1, minX-1
	}
	if maxY == minY {
		maxY, minY = maxY+1, minY-1
	}
	if c.logY {
		minY, maxY = math.Floor(minY), math.Ceil(maxY)
	} else {
		maxY *= 1.05
	}
	plotW, plotH := float64(svgW-padLeft-padRight), float64(svgH-padTop-padBottom)
	px := func(v float64) float64 { return padLeft + (tx(v)-minX)/(maxX-minX)*plotW }
	py := func(v float64) float64 { return padTop + plotH - (ty(v)-minY)/(maxY-minY)*plotH }
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", padLeft, padTop, plotW, plotH)
	// Y ticks.
	for _, v := range ticks(minY, maxY, c.logY) {
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", padLeft, padLeft+plotW, y, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", padLeft-6, y+4, number(v))
	}
	// X ticks.
	if c.xTicks != nil {
		vs := make([]float64, 0, len(c.xTicks))
		for v := range c.xTicks {
			vs = append(vs, v)
		}
		sort.Float64s(vs)
		for _, v := range vs {
			label := c.xTicks[v]
			x := px(v)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#ddd"/>`+"\n", x, x, padTop, padTop+plotH)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, padTop+plotH+16, esc(label))
		}
	} else {
		for _, v := range ticks(minX, maxX, c.logX) {
			x := px(v)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#ddd"/>`+"\n", x, x, padTop, padTop+plotH)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, padTop+plotH+16, number(v))
		}
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", padLeft+plotW/2, svgH-18, esc(c.xLabel))
	fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", padTop+plotH/2, esc(c.yLabel))
	for i, s := range c.series {
		color := palette[i%len(palette)]
		var pts []string
		for _, p := range s.points {
			if (c.logX && p[0] <= 0) || (c.logY && p[1] <= 0) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
		for _, pt := range pts {
			xy := strings.Split(pt, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], color)
		}
		ly := padTop + 10 + i*20
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", padLeft+plotW+12, padLeft+plotW+32, ly, ly, color)
		fmt.Fprintf(&b, `<text x="%.0f" y="%d">%s</text>`+"\n", padLeft+plotW+38, ly+4, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// ticks returns tick values between lo and hi (in transformed units):
// powers of ten on a log axis, about five round numbers otherwise. The
// values returned are in data units.
func ticks(lo, hi float64, log bool) []float64 {
	var out []float64
	if log {
		for e := math.Ceil(lo); e <= hi+1e-9; e++ {
			out = append(out, math.Pow(10, e))
		}
		return out
	}
	step := math.Pow(10, math.Floor(math.Log10((hi-lo)/5)))
	for _, m := range []float64{1, 2, 5, 10} {
		if (hi-lo)/(step*m) <= 6 {
			step *= m
			break
		}
	}
	for v := math.Ceil(lo/step) * step; v <= hi+1e-9; v += step {
		out = append(out, v)
	}
	return out
}

// number formats a tick label compactly.
func number(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%gk", v/1e3)
	default:
		return fmt.Sprintf("%g", math.Round(v*1000)/1000)
	}
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
