"""Plotly figures: the unit scores of the ranked entities and the TGLU token-to-token attention."""
import plotly.graph_objects as go

from .safe_text import plotly_literal

UNIT_BARS = [("s_t", "S_T (text)", "#4C78A8"), ("s_v", "S_V (vision)", "#F58518"),
             ("s_c", "S_C (cross-modal)", "#54A24B"), ("score", "S (overall)", "#444444")]


def _label(row) -> str:
    """The bar's label; plotly reads HTML in labels, so the KB's text is escaped."""
    return f"{row['rank']}. {plotly_literal(row['name'])}"


def score_chart(rows: list) -> go.Figure:
    """Grouped bars of S_T, S_V, S_C and S per ranked entity; sub-scores on hover."""
    labels = [_label(r) for r in rows]
    fig = go.Figure()
    for key, name, colour in UNIT_BARS:
        if key == "s_t":
            custom = [[r["s_t_g2g"], r["s_t_g2l"]] for r in rows]
            hover = "G2G %{customdata[0]:.3f}<br>G2L %{customdata[1]:.3f}"
        elif key == "s_v":
            custom = [[r["s_v_e2m"], r["s_v_m2e"]] for r in rows]
            hover = "E2M %{customdata[0]:.3f}<br>M2E %{customdata[1]:.3f}"
        else:
            custom, hover = None, ""
        fig.add_bar(x=labels, y=[r[key] for r in rows], name=name, marker_color=colour, customdata=custom,
                    hovertemplate=f"<b>%{{x}}</b><br>{name}: %{{y:.3f}}<br>{hover}<extra></extra>")
    fig.update_layout(barmode="group", height=360, margin=dict(l=40, r=10, t=30, b=90),
                      legend=dict(orientation="h", y=1.12), yaxis_title="score",
                      title=dict(text="Unit scores of the ranked entities (hover for G2G/G2L, E2M/M2E)",
                                 font=dict(size=13)))
    fig.update_xaxes(tickangle=-30)
    return fig


def token_attention(attention, entity_tokens: list, mention_tokens: list, entity_name: str) -> go.Figure:
    """TGLU: each entity token (row) attending over the mention tokens (columns)."""
    def ticks(tokens):
        return [plotly_literal("·" if t == "<|endoftext|>" and i > 0 and tokens[i - 1] in ("<|endoftext|>", "·")
                               else t) for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(
        z=attention.tolist() if hasattr(attention, "tolist") else attention,
        x=list(range(len(mention_tokens))), y=list(range(len(entity_tokens))), colorscale="Inferno",
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
