"""Plotly figures: the unit scores of the ranked entities and the TGLU token-to-token attention."""
import plotly.graph_objects as go

from .safe_text import plotly_literal

# (key, legend name, colour, how the bar is made of its parts: shown on hover, on the bar's own scale)
UNIT_BARS = [("score", "S (overall)", "#333333", "(S_T + S_V + S_C) / 3"),
             ("s_t", "S_T (text)", "#4C78A8", "G2G/2 %{customdata[0]:.2f} + G2L/2 %{customdata[1]:.2f}"),
             ("s_v", "S_V (vision)", "#F58518", "E2M/2 %{customdata[0]:.2f} + M2E/2 %{customdata[1]:.2f}"),
             ("s_c", "S_C (cross-modal)", "#54A24B", "")]
PARTS = {"s_t": ("s_t_g2g", "s_t_g2l"), "s_v": ("s_v_e2m", "s_v_m2e")}


def _label(row) -> str:
    """The bar's label; plotly reads HTML in labels, so the KB's text is escaped."""
    name = row["name"] if len(row["name"]) <= 28 else row["name"][:27] + "…"
    return f"{row['rank']}. {plotly_literal(name)}"


def score_range(values: list) -> list:
    """An axis range around the values, not from 0: differences of a few points between candidates on a
    scale of ~100 stay visible."""
    low, high = min(values), max(values)
    pad = 0.15 * (high - low) or max(1.0, abs(high) * 0.05)
    return [low - pad, high + pad]


def score_chart(rows: list, has_image: bool = True, entity_images: list = None) -> go.Figure:
    """Horizontal grouped bars of S, S_T, S_V, S_C per ranked entity (rank 1 on top). Without a mention
    image S_V carries nothing and is left out (said in the legend); so is the S_V of an entity without a
    picture (entity_images: a bool per row), which would otherwise pull the axis down to 0. Hover: each bar's parts, halved, so
    they add up to the bar on its own scale (G2G alone may be twice S_T)."""
    labels = [_label(r) for r in rows]
    fig, plotted = go.Figure(), []
    for key, name, colour, parts in UNIT_BARS:
        if key == "s_v" and not has_image:
            fig.add_bar(x=[None] * len(rows), y=labels, name="S_V: no image (left out)", marker_color=colour,
                        orientation="h", visible="legendonly", hoverinfo="skip")
            continue
        values = [r[key] for r in rows]
        if key == "s_v" and entity_images is not None:
            values = [v if pictured else None for v, pictured in zip(values, entity_images)]
        plotted += [v for v in values if v is not None]
        custom = [[r[p] / 2 for p in PARTS[key]] for r in rows] if key in PARTS else None
        hover = f"<br>= {parts}" if parts else ""
        fig.add_bar(x=values, y=labels, name=name, marker_color=colour, orientation="h", customdata=custom,
                    hovertemplate=f"<b>%{{y}}</b><br>{name}: %{{x:.2f}}{hover}<extra></extra>")
    # the legend under the axis: above the bars it would meet the toolbar, beside them it squeezes a phone's plot
    # margin t: room for the page's label and plotly's toolbar above the first bar
    fig.update_layout(barmode="group", height=180 + 64 * len(rows), margin=dict(l=8, r=12, t=44, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.18 * 420 / (180 + 64 * len(rows)), x=0,
                                  font=dict(size=11)),
                      bargap=0.25, bargroupgap=0.05, xaxis_title=dict(text="score (the axis does not start at 0)",
                                                                       font=dict(size=12)))
    if plotted:
        fig.update_xaxes(range=score_range(plotted))
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def token_attention(attention, entity_tokens: list, mention_tokens: list, entity_name: str) -> go.Figure:
    """TGLU: each entity token (row) attending over the mention tokens (columns)."""
    def ticks(tokens):
        return [plotly_literal("·" if t == "<|endoftext|>" and i > 0 and tokens[i - 1] in ("<|endoftext|>", "·")
                               else t) for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(
        z=attention.tolist() if hasattr(attention, "tolist") else attention,
        x=list(range(len(mention_tokens))), y=list(range(len(entity_tokens))), colorscale="Inferno",
        colorbar=dict(title=dict(text="weight"), thickness=12),
        customdata=[[[plotly_literal(e), plotly_literal(m)] for m in mention_tokens] for e in entity_tokens],
        hovertemplate="entity token <b>%{customdata[0]}</b><br>mention token <b>%{customdata[1]}</b>"
                      "<br>weight %{z:.3f}<extra></extra>"))
    fig.update_layout(height=720, margin=dict(l=110, r=10, t=40, b=110),
                      title=dict(text=f"TGLU attention: tokens of '{plotly_literal(entity_name)}' (rows) over the "
                                      "mention's tokens (columns); padding is attended too, as in the model",
                                 font=dict(size=13)))
    fig.update_xaxes(tickvals=list(range(len(mention_tokens))), ticktext=ticks(mention_tokens), tickangle=-60,
                     title="mention tokens")
    fig.update_yaxes(tickvals=list(range(len(entity_tokens))), ticktext=ticks(entity_tokens), autorange="reversed",
                     title="entity tokens")
    return fig
