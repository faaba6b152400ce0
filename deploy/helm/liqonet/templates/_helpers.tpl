{{/* The image reference: the repository at the tag, or at the chart's appVersion. */}}
{{- define "liqonet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels of every object: kustomize's, plus Helm's own and the user's (never in selectors). */}}
{{- define "liqonet.labels" -}}
app.kubernetes.io/name: liqonet
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The metadata of every object: its name, namespace (when namespaced), labels, annotations.
Called with (list $ name component namespaced [extra labels]). */}}
{{- define "liqonet.metadata" -}}
{{- $ := index . 0 -}}
name: {{ index . 1 }}
{{- if index . 3 }}
namespace: {{ $.Release.Namespace }}
{{- end }}
labels:
  {{- include "liqonet.labels" $ | nindent 2 }}
  {{- with index . 2 }}
  app.kubernetes.io/component: {{ . }}
  {{- end }}
  {{- if gt (len .) 4 }}
  {{- toYaml (index . 4) | nindent 2 }}
  {{- end }}
{{- with $.Values.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
